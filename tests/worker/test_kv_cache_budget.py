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


GIB = 1 << 30


@pytest.mark.parametrize("block_bytes, context_len, max_num_seqs, free, on_gpu, blocks, why", [
    # The bundled model's shape: 64 KiB blocks of 16 tokens, 512-token context: 16 contexts, 32 MiB.
    (1 << 16, 512, 256, 20 * GIB, False, 16 * 32, "16 full contexts of 512 tokens (the CPU default)"),
    (1 << 16, 512, 4, 20 * GIB, False, 4 * 32, "4 full contexts of 512 tokens (max_num_seqs)"),
    (1 << 16, 500, 1, 20 * GIB, False, 32, "1 full contexts of 500 tokens"),  # 31.25 blocks: 32
    # CodeGen-350M bf16: 1.25 MiB blocks, 2048 tokens (160 MiB a context): the 2 GiB cap, 12.8 contexts.
    (1280 << 10, 2048, 256, 20 * GIB, False, 2 * GIB // (1280 << 10), "12.8 full contexts of 2048 tokens: the CPU cap"),
    # 4 GiB available: 1/4 of it is 1 GiB.
    (1280 << 10, 2048, 256, 4 * GIB, False, GIB // (1280 << 10), "6.4 full contexts of 2048 tokens: 1/4 of the available"),
    # Too little memory for even one context: one context all the same.
    (1280 << 10, 2048, 256, 400 << 20, False, 128, "one full context of 2048 tokens, more than 1/4"),
    # CUDA: max_num_seqs contexts within 85% of the free memory.
    (1280 << 10, 2048, 256, 40 * GIB, True, int(0.85 * 40 * GIB) // (1280 << 10), "217.6 full contexts of 2048 tokens: 85% of the free"),
    (1280 << 10, 2048, 8, 40 * GIB, True, 8 * 128, "8 full contexts of 2048 tokens (max_num_seqs)"),
])
def test_default_size_rule(block_bytes, context_len, max_num_seqs, free, on_gpu, blocks, why):
    from engine.worker.kv_cache import default_num_blocks
    got, reason = default_num_blocks(block_bytes, 16, context_len, max_num_seqs, free, on_gpu)
    assert got == blocks and reason.startswith(why), reason


def test_bundled_model_gets_a_small_cache_and_says_why(caplog):
    # It was 512 MiB (256 full contexts) for a 10 MB model; now 16 contexts of 512 tokens.
    import logging
    with caplog.at_level(logging.INFO, logger="engine.worker.kv_cache"):
        runner = LLM().engine.runner
    assert runner.num_kv_blocks == 16 * 512 // runner.block_size
    assert _cache_bytes(runner) <= 64 << 20
    assert "KV cache: 512 blocks of 16 tokens, 0.031 GiB: 16 full contexts of 512 tokens" in caplog.text


def test_default_cache_holds_contexts_of_max_model_len(tiny_codegen_dir):
    runner = LLM(model=str(tiny_codegen_dir), max_model_len=100).engine.runner
    assert runner.num_kv_blocks == 16 * -(-100 // runner.block_size)  # 16 contexts of 7 blocks


def test_small_default_cache_preempts_and_changes_no_tokens(tiny_codegen_dir, monkeypatch):
    # One full context by default: 8 requests of 80 tokens do not fit at once, so the scheduler
    # preempts and recomputes; every request gets the tokens it gets alone.
    import engine.worker.kv_cache as kv_cache
    from engine import SamplingParams
    monkeypatch.setattr(kv_cache, "DEFAULT_CPU_CONTEXTS", 1)
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    prompts = [f"def f{i}(x):\n    return x + {i}" for i in range(8)]
    tight = LLM(model=str(tiny_codegen_dir), dtype="float32")
    assert tight.engine.runner.num_kv_blocks == 512 // 16
    together = [o.outputs[0].token_ids for o in tight.generate(prompts, params)]
    assert tight.engine.get_stats()["num_preemptions"] > 0
    roomy = LLM(model=str(tiny_codegen_dir), dtype="float32", num_kv_blocks=1024)
    assert together == [roomy.generate(p, params)[0].outputs[0].token_ids for p in prompts]
