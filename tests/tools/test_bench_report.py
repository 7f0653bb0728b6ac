"""The bench report's arithmetic (engine/tools/bench_report.py, engine/bench.summarize_run): speed-ups paired
per round, loaded against idle, TTFT / ITL / decode bandwidth of one run, failed rows in the table."""
import math

import pytest

from engine.tools import bench, bench_report
from engine.tools.bench_report import paired_ratio


def test_paired_ratio_is_per_round_then_median_and_range():
    # Round 2 is a slow round for both systems: per-round ratios 2, 2, 4 (median 2), whereas the
    # ratio of medians would be 100 / 40 = 2.5.
    ours, theirs = [100.0, 50.0, 120.0], [50.0, 25.0, 30.0]
    assert paired_ratio(ours, theirs) == {"median": 2.0, "min": 2.0, "max": 4.0, "rounds": 3}


def test_paired_ratio_skips_rounds_where_either_failed():
    assert paired_ratio([10.0, None, 30.0, 8.0], [5.0, 5.0, None, 2.0]) == {
        "median": 3.0, "min": 2.0, "max": 4.0, "rounds": 2}
    assert paired_ratio([None], [1.0]) is None


def _spec(**kw):
    return dict(dict(system="transformers", concurrency=2, prompt_len=3, max_tokens=3, background_load=0), **kw)


def test_summarize_run_one_token_ttft_and_streamed(tiny_config):
    storage = dict(weight=2, per_channel=0, act=2, kv=2, kv_per_row=0)
    peer = bench.summarize_run(_spec(), {"full_s": 1.0, "prefill_s": 0.2, "storage": storage}, tiny_config)
    assert peer["ttft_method"] == "1-token run"
    assert peer["tok_s"] == pytest.approx(6.0)
    assert peer["ttft_ms"] == pytest.approx(200.0)
    assert peer["itl_ms"] == pytest.approx(400.0)  # (1.0 - 0.2) / (3 - 1)
    assert peer["decode_gbs"] == pytest.approx(4360 / 0.8 / 1e9)  # test_bench_bytes' 4360 bytes
    ours = bench.summarize_run(_spec(system="codeinfer"), {"full_s": 1.0, "prefill_s": 0.9, "ttft_s": 0.5,
                                                           "ttft_method": "streamed", "storage": storage},
                               tiny_config)
    assert (ours["ttft_method"], ours["ttft_ms"], ours["itl_ms"]) == ("streamed", pytest.approx(500.0),
                                                                       pytest.approx(250.0))


@pytest.fixture
def tiny_config():
    from tests.tools.test_bench_bytes import codegen
    return codegen()


def _run(tok_s):
    return dict(tok_s=tok_s, dtype="int8", ttft_method="streamed", peak_rss_mb=100.0, ttft_ms=1.0, itl_ms=2.0,
                decode_gbs=3.0, pct_of_read=50.0, read_gbs=6.0, copy_gbs=8.0, load_s=1.5)


def _systems():
    return [bench.System("codeinfer", {}, "codeinfer int8"), bench.System("transformers", {}, "transformers"),
            bench.System("ctranslate2", {}, "ctranslate2")]


def test_rows_speedups_and_loaded_vs_idle():
    failed = [{"failed": "ValueError: no GPT-Neo"}] * 2
    runs = {(0, 1, 0): [_run(100.0), _run(60.0)], (0, 1, 1): [_run(50.0), _run(45.0)],
            (1, 1, 0): [_run(50.0), _run(20.0)], (1, 1, 1): [_run(10.0), _run(15.0)],
            (2, 1, 0): failed, (2, 1, 1): failed}
    rows = bench_report.summarize_rows(_systems(), runs)
    ours_loaded = rows[1]
    assert ours_loaded["vs_idle"]["median"] == pytest.approx((0.5 + 0.75) / 2)
    assert rows[0]["tok_s"] == 80.0 and (rows[0]["tok_s_min"], rows[0]["tok_s_max"]) == (60.0, 100.0)
    assert rows[4]["failed"] == "ValueError: no GPT-Neo" and "tok_s" not in rows[4]
    ups = bench_report.speedups(rows)
    assert [(s["load"], s["peer"]) for s in ups] == [(0, "transformers int8"), (1, "transformers int8")]
    assert ups[0]["median"] == pytest.approx((2.0 + 3.0) / 2) and (ups[0]["min"], ups[0]["max"]) == (2.0, 3.0)
    result = {"rows": rows, "speedups": ups, "model_name": "m", "model": "/m", "prompt_len": 3, "max_tokens": 3,
              "repeat": 2, "threads": 2, "background_load": 1,
              "rounds": [{"bandwidth": {0: {"read_gbs": 6.0, "copy_gbs": 8.0},
                                        1: {"read_gbs": 3.0, "copy_gbs": 4.0}}}]}
    table = bench_report.format_table(result)
    assert "| 1 | idle | ctranslate2 | failed: ValueError: no GPT-Neo |" in table
    assert "| 1 | +1 busy | codeinfer int8 | 47.5 (45.0-50.0) | 0.62x (0.50-0.75) |" in table
    assert "2.50x (2.00-3.00)" in table and "read-only 3.0-3.0 GB/s" in table
    assert "| 3.0 (50%) | 100 | 1.5 |" in table  # peak RSS, load s
    assert not math.isnan(rows[0]["decode_gbs"])


def test_plot_shows_every_system_failed_ones_too(tmp_path, monkeypatch):
    figure = pytest.importorskip("matplotlib.figure")
    legends = []
    monkeypatch.setattr(figure.Figure, "savefig", lambda fig, *a, **k: legends.append(
        [t.get_text() for t in fig.axes[0].get_legend().get_texts()]))
    runs = {(0, 1, 0): [_run(100.0)], (2, 1, 0): [{"failed": "no GPT-Neo"}]}
    rows = bench_report.summarize_rows(_systems(), runs)
    bench_report.plot({"rows": rows, "model": "/m"}, str(tmp_path / "p.png"))
    assert legends == [["codeinfer int8", "ctranslate2 (failed)"]]
