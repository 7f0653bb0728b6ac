"""kv_cache_dtype="int8": int8 KV rows with per-row scales keep teacher-forced agreement with fp32,
leave batched, forked (copy-on-write) and prefix-cached generation unchanged, and are refused
where they cannot run."""
import pytest
import torch

from engine import LLM, SamplingParams
from engine.tools.bench_quality import agreement

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _prompts(n=6, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return [{"prompt_token_ids": torch.randint(0, 200, (length,), generator=gen).tolist()}
            for length in (5, 17, 40, 3, 64, 23)[:n]]


def _tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_int8_kv_cache_agrees_with_fp32(tiny_codegen_dir, tiny_gptneo_dir, dtype):
    for model in (tiny_codegen_dir, tiny_gptneo_dir):
        result = agreement(str(model), [dtype], num=3, length=96, chunk=8, kv_cache_dtype="int8")
        assert result[dtype] >= 0.85, result


@pytest.mark.parametrize("which", ["codegen", "gptneo"])
def test_int8_kv_cache_batched_equals_single(tiny_codegen_dir, tiny_gptneo_dir, which):
    model = tiny_codegen_dir if which == "codegen" else tiny_gptneo_dir
    llm = LLM(model=str(model), dtype="bfloat16", kv_cache_dtype="int8", num_kv_blocks=256,
              enable_prefix_caching=False)
    runner = llm.engine.runner
    assert runner.kv_cache.dtype == torch.int8 and runner.kv_scale.shape == runner.kv_cache.shape[:-1]
    prompts = _prompts()
    batched = _tokens(llm.generate(prompts, GREEDY, use_tqdm=False))
    assert batched == [_tokens(llm.generate([p], GREEDY, use_tqdm=False))[0] for p in prompts]


def test_int8_kv_cache_forks_and_prefix_reuse(tiny_codegen_dir):
    # n=2 greedy samples share the prompt's blocks and copy the partial one (scales included):
    # both must equal the single greedy run; a second run of the same prompts reuses cached blocks.
    llm = LLM(model=str(tiny_codegen_dir), dtype="bfloat16", kv_cache_dtype="int8", num_kv_blocks=256)
    prompts = _prompts(3, seed=5)
    single = _tokens(llm.generate(prompts, GREEDY, use_tqdm=False))
    forked = llm.generate(prompts, SamplingParams(n=2, temperature=0, max_tokens=24, ignore_eos=True),
                          use_tqdm=False)
    assert [[s.token_ids for s in o.outputs] for o in forked] == [[t, t] for t in single]
    assert _tokens(llm.generate(prompts, GREEDY, use_tqdm=False)) == single


def test_int8_kv_cache_halves_block_bytes(tiny_codegen_dir):
    bf16 = LLM(model=str(tiny_codegen_dir), dtype="bfloat16", num_kv_blocks=8).engine.runner
    int8 = LLM(model=str(tiny_codegen_dir), dtype="bfloat16", kv_cache_dtype="int8", num_kv_blocks=8).engine.runner
    head_dim = bf16.config.head_dim
    assert int8.block_bytes() * 2 * head_dim == bf16.block_bytes() * (head_dim + 4)


def test_int8_kv_cache_bad_options(tiny_codegen_dir):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LLM(model=str(tiny_codegen_dir), kv_cache_dtype="fp8", num_kv_blocks=8)
