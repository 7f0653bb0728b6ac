"""What `codeinfer bench` times, one function per system. Each takes the prompts of one
configuration and returns wall seconds for a full run (max_tokens new tokens per prompt) and for a
prefill-only run (one new token) on a second prompt set of the same shape, after a warm-up on a third.

Every system runs greedy with EOS ignored, so each request emits exactly max_tokens tokens.
transformers and CTranslate2 are optional extras (`pip install codeinfer[bench]`)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

# Prompt sets of one configuration: "warm" (warm-up), "prefill" (one new token), "full" (timed).
PromptSets = dict[str, list[list[int]]]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _time_runs(run, prompts: PromptSets, max_tokens: int) -> dict:
    run(prompts["warm"], min(4, max_tokens))
    prefill_s = _timed(lambda: run(prompts["prefill"], 1))
    full_s = _timed(lambda: run(prompts["full"], max_tokens))
    return {"full_s": full_s, "prefill_s": prefill_s, "full_end": time.perf_counter()}


def run_codeinfer(model: str, engine_kwargs: dict, prompts: PromptSets, max_tokens: int) -> dict:
    """codeinfer's engine loop; the prefill-only time is also read inside the timed run (the moment
    every request has its first token), which is more exact than the separate run."""
    from engine import LLM, SamplingParams

    kwargs = dict(engine_kwargs, model=model)
    kwargs["max_num_seqs"] = max(kwargs.get("max_num_seqs") or 1, len(prompts["full"]))
    if kwargs.get("num_kv_blocks") is None and kwargs.get("kv_cache_memory_bytes") is None:
        # The cache this workload needs (the peers, too, hold only what their requests use), not
        # the default reservation: peak RSS then compares like with like.
        block_size = kwargs.get("block_size") or 16
        longest = max(len(p) for batch in prompts.values() for p in batch) + max_tokens
        kwargs["num_kv_blocks"] = len(prompts["full"]) * -(-longest // block_size)
    engine = LLM(**kwargs).engine
    first_token_at = []

    def run(batch, num_tokens):
        params = SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True)
        for i, ids in enumerate(batch):
            engine.add_request(f"bench-{len(first_token_at)}-{i}", ids, params)
        started, done, first = set(), 0, None
        while engine.has_unfinished_requests():
            for out in engine.step():
                started.add(out.request_id)
                done += out.finished and len(out.outputs[0].token_ids) == num_tokens
            if first is None and len(started) == len(batch):
                first = time.perf_counter()
        first_token_at.append(first)
        assert done == len(batch)

    result = _time_runs(run, prompts, max_tokens)
    # first_token_at: [warm-up, prefill-only run, timed run]; the timed run began full_s before its end.
    result["decode_s"] = result["full_end"] - first_token_at[2]
    result["weight_bytes"] = model_weight_bytes(engine.runner.model)
    result["dtype"] = str(engine.runner.quant or engine.dtype).replace("torch.", "")
    if engine.runner.kv_dtype == torch.int8:
        result["dtype"] += " + int8 KV"
    return result


def model_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers a decode step reads (tied weights counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def run_transformers(model: str, prompts: PromptSets, max_tokens: int, pad_id: int) -> dict:
    """transformers generate() in bf16 (its fastest mode on this CPU), left-padded batches."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()

    def run(batch, num_tokens):
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):  # left padding: every prompt ends at the last column
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                              max_new_tokens=num_tokens, min_new_tokens=num_tokens,
                              pad_token_id=pad_id)
        assert out.shape[1] == width + num_tokens

    result = _time_runs(run, prompts, max_tokens)
    result["weight_bytes"] = model_weight_bytes(hf)
    result["dtype"] = "bfloat16"
    return result


def convert_ctranslate2(model: str, out: Path) -> Path:
    """Convert a checkpoint with CTranslate2's own converter, int8 weights (cached in out)."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise ValueError("compare: ctranslate2 is not installed (pip install ctranslate2, "
                         "or pip install codeinfer[bench])") from None
    if not (out / "model.bin").is_file():
        TransformersConverter(model).convert(str(out), quantization="int8", force=True)
    return out


def run_ctranslate2(ct2_dir: str, prompts: PromptSets, max_tokens: int) -> dict:
    """CTranslate2 Generator.generate_batch, int8 (its fastest mode on this CPU), greedy."""
    import ctranslate2

    threads = len(os.sched_getaffinity(0))
    gen = ctranslate2.Generator(ct2_dir, device="cpu", compute_type="int8",
                                inter_threads=1, intra_threads=threads)
    vocab = _ct2_vocabulary(Path(ct2_dir))

    def run(batch, num_tokens):
        tokens = [[vocab[i] for i in p] for p in batch]
        res = gen.generate_batch(tokens, max_length=num_tokens, min_length=num_tokens,
                                 sampling_topk=1, beam_size=1, include_prompt_in_result=False)
        assert all(len(r.sequences_ids[0]) == num_tokens for r in res)

    result = _time_runs(run, prompts, max_tokens)
    result["weight_bytes"] = (Path(ct2_dir) / "model.bin").stat().st_size
    result["dtype"] = "int8"
    return result


def _ct2_vocabulary(ct2_dir: Path) -> list[str]:
    import json
    for name in ("vocabulary.json", "shared_vocabulary.json"):
        if (ct2_dir / name).is_file():
            return json.loads((ct2_dir / name).read_text())
    return (ct2_dir / "vocabulary.txt").read_text().split("\n")
