"""The KV cache never takes more memory than the user's budget (kv_cache_memory_bytes /
--kv-cache-memory), an int8 cache fits ~1.9x the blocks in the same budget, and a budget too small
for the request is a clear error."""
import argparse

import pytest

from engine import LLM
from engine.engine_args import parse_bytes


def _cache_bytes(runner):
    scale = 0 if runner.kv_scale is None else runner.kv_scale.nbytes
    return runner.kv_cache.nbytes + scale


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_cache_fits_the_budget(tiny_codegen_dir, kv_cache_dtype):
    budget = 300_000
    runner = LLM(model=str(tiny_codegen_dir), dtype="bfloat16", kv_cache_dtype=kv_cache_dtype,
                 kv_cache_memory_bytes=budget, max_num_seqs=64).engine.runner
    assert _cache_bytes(runner) <= budget
    assert runner.num_kv_blocks == budget // runner.block_bytes()  # and it uses the budget
    assert _cache_bytes(runner) == runner.num_kv_blocks * runner.block_bytes()


def test_default_cpu_cache_is_capped_and_resident(tiny_codegen_dir, monkeypatch):
    # Without a budget the CPU cache takes at most CPU_KV_MEMORY_CAP bytes, and it is zeroed at
    # start-up (no page of it is faulted in later by a decode step; unused scales read as 0).
    import engine.worker.kv_cache as kv_cache
    monkeypatch.setattr(kv_cache, "CPU_KV_MEMORY_CAP", 200_000)
    runner = LLM(model=str(tiny_codegen_dir), dtype="bfloat16", kv_cache_dtype="int8").engine.runner
    assert 0 < _cache_bytes(runner) <= 200_000
    assert runner.num_kv_blocks == 200_000 // runner.block_bytes()
    assert not runner.kv_cache.any() and not runner.kv_scale.any()


def test_int8_cache_holds_more_blocks(tiny_codegen_dir):
    # A head row is 2 * head_dim bytes in bf16, head_dim + 4 in int8 (its fp32 scale included):
    # 1.6x the blocks at this test model's head_dim 16, 1.88x at CodeGen-350M's 64.
    budget = 300_000
    runners = {kv: LLM(model=str(tiny_codegen_dir), dtype="bfloat16", kv_cache_dtype=kv, max_num_seqs=64,
                       kv_cache_memory_bytes=budget).engine.runner for kv in ("auto", "int8")}
    head_dim = runners["auto"].config.head_dim
    ratio = runners["int8"].num_kv_blocks / runners["auto"].num_kv_blocks
    assert ratio >= 0.95 * (2 * head_dim) / (head_dim + 4)


def test_budget_errors(tiny_codegen_dir):
    with pytest.raises(ValueError, match="kv_cache_memory_bytes"):
        LLM(model=str(tiny_codegen_dir), kv_cache_memory_bytes=100)
    with pytest.raises(ValueError, match="kv_cache_memory_bytes"):
        LLM(model=str(tiny_codegen_dir), num_kv_blocks=1000, kv_cache_memory_bytes=300_000)
    with pytest.raises(ValueError, match="kv_cache_memory_bytes"):
        LLM(model=str(tiny_codegen_dir), kv_cache_memory_bytes=-5)


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("512MiB") == 512 << 20
    assert parse_bytes("1.5G") == 3 << 29 and parse_bytes("1000000") == 1_000_000
    for bad in ("abc", "-1", "GiB", "2TiB"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_bytes(bad)
