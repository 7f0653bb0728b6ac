"""The prepared-weights cache: a second load of a checkpoint reads its quantised / packed weights
from the cache entry the first wrote, and gives the same tokens and logprobs to the bit; changed,
torn or foreign entries are ignored and rebuilt; small models, a full disk and
--no-prepared-weights-cache write none."""
import logging
import os
import shutil

import pytest
import torch

from engine import LLM, SamplingParams
from engine.worker import model_runner, prepared_weights
from engine.worker.prepared_weights import MARKER, WEIGHTS

PROMPTS = [[5, 9, 2, 77, 31], [3] * 40 + [8, 1]]
PARAMS = SamplingParams(temperature=0.0, max_tokens=12, logprobs=2, ignore_eos=True)


@pytest.fixture(autouse=True)
def _cache_every_model(monkeypatch, tmp_path):
    monkeypatch.setattr(prepared_weights, "MIN_CACHED_BYTES", 0)
    monkeypatch.setenv("CODEINFER_CACHE_ROOT", str(tmp_path / "cache"))  # this test's entries only


@pytest.fixture
def model_dir(request, tiny_codegen_dir, tiny_gptneo_dir, tmp_path):
    src = {"codegen": tiny_codegen_dir, "gptneo": tiny_gptneo_dir}[request.param]
    return shutil.copytree(src, tmp_path / request.param)  # its own files: mtimes are edited below


def _outputs(model_dir, dtype, **kwargs):
    llm = LLM(model=str(model_dir), dtype=dtype, num_kv_blocks=16, **kwargs)
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=PARAMS)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


def _entry(model_dir, dtype):
    return prepared_weights.entry_dir(model_dir, {"bfloat16": "bf16"}.get(dtype, dtype))


def _spy_loads(monkeypatch):
    """The number of times the float checkpoint is read (prepared-weights hits do not)."""
    calls = []
    real = model_runner.load_model
    monkeypatch.setattr(model_runner, "load_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("model_dir", ["codegen", "gptneo"], indirect=True)
@pytest.mark.parametrize("dtype", ["int8", "int4", "bfloat16"])
def test_second_load_reads_the_entry_and_changes_no_bit(model_dir, dtype, monkeypatch, caplog):
    loads = _spy_loads(monkeypatch)
    fresh = _outputs(model_dir, dtype)
    entry = _entry(model_dir, dtype)
    assert (entry / MARKER).is_file() and (entry / WEIGHTS).is_file() and len(loads) == 1
    with caplog.at_level(logging.INFO, logger="engine"):
        cached = _outputs(model_dir, dtype)
    assert len(loads) == 1, "the second load read the float checkpoint"
    assert f"(prepared weights from {entry})" in caplog.text  # the start-up summary says so
    assert cached == fresh


@pytest.mark.parametrize("model_dir", ["codegen"], indirect=True)
def test_changed_checkpoint_torn_or_foreign_entries_are_rebuilt(model_dir, monkeypatch, caplog):
    loads = _spy_loads(monkeypatch)
    want = _outputs(model_dir, "int8")
    entry = _entry(model_dir, "int8")
    # The checkpoint changed after the entry was written: its fingerprint no longer matches.
    weights = model_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert _outputs(model_dir, "int8") == want and len(loads) == 2
    # A torn file (cut inside its data), then a foreign one (a tensor of another shape).
    with open(entry / WEIGHTS, "r+b") as f:
        f.truncate(os.path.getsize(entry / WEIGHTS) // 2)
    with caplog.at_level(logging.WARNING):
        assert _outputs(model_dir, "int8") == want and len(loads) == 3
    assert "ignoring the prepared-weights cache entry" in caplog.text
    header = prepared_weights.read_header(entry / WEIGHTS)
    name = next(n for n in header if n.endswith("scale"))
    tensors = {n: t.clone() for n, t in prepared_weights._map_tensors(entry / WEIGHTS, header).items()}
    tensors[name] = torch.zeros(3, dtype=torch.float32)
    (entry / WEIGHTS).unlink()
    prepared_weights._write(entry / WEIGHTS, tensors)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _outputs(model_dir, "int8") == want and len(loads) == 4
    assert "do not match the model" in caplog.text
    assert _outputs(model_dir, "int8") == want and len(loads) == 4  # the rebuilt entry is used


@pytest.mark.parametrize("model_dir", ["gptneo"], indirect=True)
def test_no_entry_when_off_small_or_the_disk_is_full(model_dir, monkeypatch):
    entry = _entry(model_dir, "int8")
    _outputs(model_dir, "int8", prepared_weights_cache=False)
    assert not entry.exists()
    monkeypatch.setattr(prepared_weights, "MIN_CACHED_BYTES", 1 << 40)
    _outputs(model_dir, "int8")
    assert not entry.exists()
    monkeypatch.setattr(prepared_weights, "MIN_CACHED_BYTES", 0)
    usage = shutil.disk_usage(model_dir)
    monkeypatch.setattr(prepared_weights.shutil, "disk_usage",
                        lambda path: usage._replace(free=prepared_weights.FREE_MARGIN_BYTES))
    _outputs(model_dir, "int8")
    assert not entry.exists() and not list(entry.parent.glob(".*.tmp"))
    # float32 prepares nothing: no entry either way.
    _outputs(model_dir, "float32")
    assert not any(entry.parent.iterdir())
