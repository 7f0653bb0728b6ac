"""Teacher-forced next-token agreement with fp32: feed the same fixed token sequences to the model in
fp32 and in another dtype and count the positions whose argmax (over sampleable ids) matches.

The fixed prompts are this package's own Python source, tokenized by the model's tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch

from ..layers.attention import AttentionMetadata

ENGINE_DIR = Path(__file__).resolve().parents[1]
SOURCES = ("worker/sampler.py", "core/scheduler.py", "core/block_manager.py", "tokenizer.py",
           "worker/weights.py", "worker/model_runner.py", "core/llm_engine.py", "config.py")


def fixed_prompts(tokenizer, num: int = 8, length: int = 256) -> list[list[int]]:
    """num windows of length token ids cut from the package source (the same every run)."""
    text = "\n".join((ENGINE_DIR / name).read_text() for name in SOURCES)
    ids = tokenizer.encode(text)
    step = max(length, (len(ids) - length) // max(num - 1, 1))
    return [ids[i:i + length] for i in range(0, len(ids) - length + 1, step)][:num]


@torch.inference_mode()
def next_token_argmax(engine, ids: list[int], chunk: int = 0) -> torch.Tensor:
    """[len(ids)] argmax of the next-token logits at every position, prefilling ids in chunks of
    `chunk` tokens (0: one chunk). The chunk size picks the rows per matmul, hence the int8 path."""
    runner = engine.runner
    num_tokens, bs = len(ids), runner.block_size
    num_blocks = -(-num_tokens // bs)
    assert num_blocks <= runner.num_kv_blocks
    block_tables = torch.arange(num_blocks, dtype=torch.int32)[None]
    ids_t, out = torch.tensor(ids), []
    for start in range(0, num_tokens, chunk or num_tokens):
        end = min(num_tokens, start + (chunk or num_tokens))
        positions = torch.arange(start, end)
        meta = AttentionMetadata(
            positions=positions, slot_mapping=positions, block_tables=block_tables,
            seq_lens=torch.tensor([end], dtype=torch.int32),
            cu_seqlens_q=torch.tensor([0, end - start], dtype=torch.int32))
        hidden = runner.model(ids_t[start:end], torch.zeros_like(positions), runner.remap, meta)
        out.append(runner.logits(hidden).argmax(-1))
    return torch.cat(out)


def agreement(model: str | None, dtypes: list[str], num: int = 8, length: int = 256,
              chunk: int = 0, kv_cache_dtype: str = "auto") -> dict:
    """{dtype: fraction of positions whose argmax equals fp32's} over the fixed prompts; the
    compared dtypes prefill in chunks of `chunk` tokens (0: whole prompts) with a KV cache of
    kv_cache_dtype (the fp32 reference keeps an fp32 cache)."""
    from ..core.llm_engine import LLMEngine

    kv_blocks = -(-length // 16) + 1
    ref = LLMEngine(model=model, dtype="float32", num_kv_blocks=kv_blocks)
    prompts = fixed_prompts(ref.tokenizer, num, length)
    expected = [next_token_argmax(ref, p) for p in prompts]
    del ref
    result = {}
    for dtype in dtypes:
        eng = LLMEngine(model=model, dtype=dtype, num_kv_blocks=kv_blocks, kv_cache_dtype=kv_cache_dtype)
        same = sum(int((next_token_argmax(eng, p, chunk) == e).sum())
                   for p, e in zip(prompts, expected))
        result[dtype] = same / sum(len(p) for p in prompts)
    return result
