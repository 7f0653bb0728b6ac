"""The comparison's control flow (engine/tools/bench.py): a peer that fails is reported failed with its
one-line reason while the others still run, rounds are round robin with a bandwidth sample each,
a worker's error becomes a one-line reason, and missing packages fail before anything runs."""
import importlib.util
import json
import os
import re

import pytest

from engine.tools import bench, bench_openvino
from engine.tools.bench import RunFailed, System


def _fake_run(calls, broken=("ctranslate2",), error=RunFailed("CTranslate2 cannot convert GPT-Neo")):
    def run(spec):
        calls.append((spec["system"], spec["concurrency"], spec["background_load"]))
        if spec["system"] in broken:
            raise error
        return {"tok_s": 10.0 + len(calls), "decode_gbs": 2.0, "ttft_ms": 1.0, "itl_ms": 1.0}
    return run


def _systems():
    return [System(name, {"system": name}, name) for name in ("codeinfer", "ctranslate2", "transformers")]


def test_failing_peer_is_reported_and_the_others_run():
    calls, bandwidth = [], []
    measure = lambda: bandwidth.append(1) or {"read_gbs": 4.0, "copy_gbs": 5.0}  # noqa: E731
    runs, rounds = bench.run_rounds(_systems(), [1, 4], 2, [0], run=_fake_run(calls), measure=measure,
                                    log=lambda *a: None)
    assert len(rounds) == len(bandwidth) == 4  # one sample per round
    # The failing peer is tried once per concurrency, then skipped; the others run every round.
    assert calls.count(("ctranslate2", 1, 0)) == 1 and calls.count(("ctranslate2", 4, 0)) == 1
    assert calls.count(("transformers", 4, 0)) == 2 and calls.count(("codeinfer", 1, 0)) == 2
    assert runs[(1, 1, 0)] == [{"failed": "CTranslate2 cannot convert GPT-Neo"}] * 2
    ok = runs[(2, 4, 0)]
    assert [r["round"] for r in ok] == [0, 1] and ok[0]["pct_of_read"] == 50.0
    # Round robin: round 1 of every system before round 2 of any.
    assert [c[0] for c in calls[:3]] == ["codeinfer", "ctranslate2", "transformers"]


def test_any_exception_of_a_peer_is_its_failure_not_the_comparisons():
    calls = []
    run = _fake_run(calls, ("transformers",), KeyError("x"))
    runs, _ = bench.run_rounds(_systems(), [1], 1, [0, 1], run=run,
                               measure=lambda: {"read_gbs": 1.0, "copy_gbs": 1.0}, log=lambda *a: None)
    assert runs[(2, 1, 0)] == [{"failed": "KeyError: 'x'"}] and runs[(2, 1, 1)] == [{"failed": "KeyError: 'x'"}]
    assert ("transformers", 1, 1) not in calls and ("codeinfer", 1, 1) in calls


def test_a_system_that_could_not_be_prepared_never_runs():
    systems = _systems()
    systems[2].failed = "optimum-intel export failed: ImportError"
    calls = []
    runs, _ = bench.run_rounds(systems, [1], 1, [0], run=_fake_run(calls, ()),
                               measure=lambda: {"read_gbs": 1.0, "copy_gbs": 1.0}, log=lambda *a: None)
    assert all(c[0] != "transformers" for c in calls)
    assert runs[(2, 1, 0)] == [{"failed": "optimum-intel export failed: ImportError"}]


def test_worker_error_becomes_its_last_line(capsys):
    assert bench._worker_main(json.dumps({"system": "nope"})) == 1
    err = capsys.readouterr().err
    assert bench._last_line(err) == "KeyError: 'concurrency'"


def test_missing_packages_fail_early_naming_pip(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    missing = ("openvino_genai", "ctranslate2")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in missing else real(name, *a))
    with pytest.raises(ValueError, match=re.escape('pip install -e ".[bench]" torch==2.13.0')):
        bench.check_peer("openvino", str(tmp_path), {})
    with pytest.raises(ValueError, match="ctranslate2 is not installed"):
        bench.check_peer("ctranslate2", str(tmp_path), {})


def test_openvino_export_cache_key_and_precision(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    first = bench_openvino.export_dir(str(ckpt))
    assert first.parent == tmp_path / "cache" / "codeinfer" / "openvino"
    os.utime(ckpt / "config.json", ns=(1, 10**18))
    assert bench_openvino.export_dir(str(ckpt)) != first  # a rewritten checkpoint is exported anew
    assert bench_openvino.resolve_precision("auto", ["FP32", "INT8"]) == "f32"
    assert bench_openvino.resolve_precision("auto", ["FP32", "BF16"]) == "bf16"
    with pytest.raises(ValueError, match="no BF16"):
        bench_openvino.resolve_precision("bf16", ["FP32"])


def test_openvino_ttft_is_the_slowest_first_token_of_its_perf_metrics():
    """OpenVINO's TTFT comes from the timed generate's own perf metrics (ms), the latest request's."""
    from types import SimpleNamespace

    def result(ttft_ms):
        return SimpleNamespace(perf_metrics=SimpleNamespace(get_ttft=lambda: SimpleNamespace(mean=ttft_ms)))
    assert bench_openvino._ttft_s([result(120.0), result(450.0), result(300.0)]) == pytest.approx(0.45)
