"""End-to-end part of benchmarks/gpu_check.py: generated tokens/s of the engine against transformers
generate() on the same GPU, same random prompts, greedy, EOS ignored, after a warm-up, on random
weights with a real model's shapes (benchmarks/make_checkpoints.py), bf16 for both."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

SHAPE = "codegen-350m"
CONCURRENCY = (1, 32)
PROMPT_LEN, MAX_TOKENS = 128, 64


def _synced_seconds(fn, device) -> float:
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def engine_tok_s(path: Path, prompts: list[list[int]], device) -> float:
    from engine import LLM, SamplingParams
    llm = LLM(str(path), dtype="bfloat16", device=device, max_num_seqs=len(prompts))
    warm = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    llm.generate(prompt_token_ids=prompts, sampling_params=warm, use_tqdm=False)
    seconds = _synced_seconds(lambda: llm.generate(prompt_token_ids=prompts, sampling_params=params,
                                                   use_tqdm=False), device)
    return len(prompts) * MAX_TOKENS / seconds


def transformers_tok_s(path: Path, prompts: list[list[int]], device, pad_id: int) -> float:
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).to(device).eval()
    ids = torch.tensor(prompts, device=device)  # equal lengths: no padding needed
    mask = torch.ones_like(ids)

    def run(num_tokens):
        with torch.inference_mode():
            hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=num_tokens,
                        min_new_tokens=num_tokens, pad_token_id=pad_id)
    run(4)
    seconds = _synced_seconds(lambda: run(MAX_TOKENS), device)
    return len(prompts) * MAX_TOKENS / seconds


def _compare(path: Path, num: int, vocab: int, pad_id: int, device) -> tuple[None, str]:
    gen = torch.Generator().manual_seed(num)
    prompts = torch.randint(1, vocab, (num, PROMPT_LEN), generator=gen).tolist()
    ours = engine_tok_s(path, prompts, device)
    torch.cuda.empty_cache()  # the engine's KV cache is gone with it: give the memory back first
    theirs = transformers_tok_s(path, prompts, device, pad_id)
    torch.cuda.empty_cache()
    return None, f"codeinfer {ours:.0f} tok/s, transformers {theirs:.0f} tok/s ({ours / theirs:.2f}x)"


def end_to_end_rows(device, guarded) -> list:
    """One row per concurrency; guarded(check, case, fn) turns fn's (ok, detail) or error into a row."""
    from benchmarks.make_checkpoints import make
    from engine.config import load_config
    from engine.tokenizer import Tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        path = make(SHAPE, Path(tmp))
        config = load_config(path)
        tok = Tokenizer(path, config.eos_token_id)
        vocab, pad_id = min(len(tok), config.vocab_size), tok.eos_token_id or 0
        return [guarded("end-to-end tokens/s", f"{SHAPE} bf16, {n} x {PROMPT_LEN} + {MAX_TOKENS} tokens",
                        lambda: _compare(path, n, vocab, pad_id, device)) for n in CONCURRENCY]
