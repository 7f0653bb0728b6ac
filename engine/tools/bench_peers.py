"""What `codeinfer bench` times, one function per system (OpenVINO's in engine/tools/bench_openvino.py).
Each takes the spec of one configuration and its prompt sets, and returns wall seconds of a full run
(max_tokens new tokens per prompt) and of a prefill-only run (one new token) on a second prompt set
of the same shape, after a warm-up on a third, with `storage` (how it stores what a decode step
reads, engine.tools.bench_bytes.Storage as a dict) and a dtype label.

Every system runs greedy with EOS ignored, so each request emits exactly max_tokens tokens.
transformers and CTranslate2 are optional extras (`pip install -e ".[bench]"` from a checkout)."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from ..layers.int4 import GROUP_SIZE as INT4_GROUP_SIZE
from . import BENCH_EXTRA, bench_load
from .bench_bytes import Storage

# Prompt sets of one configuration: "warm" (warm-up), "prefill" (one new token), "full" (timed).
PromptSets = dict[str, list[list[int]]]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_runs(run, prompts: PromptSets, max_tokens: int, background_load: int = 0) -> dict:
    """run(batch, num_tokens) three times: warm-up, prefill-only, full. With background_load busy
    processes beside them, started after the model is loaded; the warm-up runs under the load too,
    so thread pools have met it before the timed runs. runs_start: when the first run began (the
    model is loaded by then)."""
    runs_start = time.perf_counter()
    with bench_load.background_load(background_load):
        run(prompts["warm"], min(4, max_tokens))
        prefill_s = _timed(lambda: run(prompts["prefill"], 1))
        full_start = time.perf_counter()
        run(prompts["full"], max_tokens)
        full_s = time.perf_counter() - full_start
    return {"full_s": full_s, "prefill_s": prefill_s, "full_start": full_start, "runs_start": runs_start}


def _engine_kwargs(spec: dict, prompts: PromptSets) -> dict:
    kwargs = dict(spec["engine"], model=spec["model"])
    kwargs["max_num_seqs"] = max(kwargs.get("max_num_seqs") or 1, len(prompts["full"]))
    if kwargs.get("num_kv_blocks") is None and kwargs.get("kv_cache_memory_bytes") is None:
        # The cache this workload needs (the peers, too, hold only what their requests use), not
        # the default reservation: peak RSS then compares like with like.
        block_size = kwargs.get("block_size") or 16
        longest = max(len(p) for batch in prompts.values() for p in batch) + spec["max_tokens"]
        kwargs["num_kv_blocks"] = len(prompts["full"]) * -(-longest // block_size)
    return kwargs


def run_codeinfer(spec: dict, prompts: PromptSets) -> dict:
    """codeinfer's engine loop. It streams, so TTFT is read inside the timed run: the moment every
    request of the batch has its first token (what a peer's one-token run measures)."""
    from .. import LLM, SamplingParams

    engine = LLM(**_engine_kwargs(spec, prompts)).engine
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

    before = engine.get_stats()
    result = time_runs(run, prompts, spec["max_tokens"], spec["background_load"])
    if spec["engine"].get("speculative_config"):
        result["spec"] = spec_counters(before, engine.get_stats())
    # first_token_at: [warm-up, prefill-only run, timed run].
    result["ttft_s"] = first_token_at[2] - result["full_start"]
    result["ttft_method"] = "streamed"
    runner = engine.runner
    int8_kv = runner.kv_dtype == torch.int8
    act = runner.dtype.itemsize
    # int8 linears: 1 byte a weight + an fp32 scale and an int32 column sum per output channel;
    # int4: half a byte + an fp16 scale and min per group, an int8 lm_head; an int8 KV row carries one
    # fp32 scale.
    weight = {"int8": 1, "int4": 0.5 + 4 / INT4_GROUP_SIZE}.get(runner.quant, act)
    storage = Storage(weight=weight, per_channel=8 if runner.quant == "int8" else 0, act=act,
                      kv=runner.kv_dtype.itemsize, kv_per_row=4 if int8_kv else 0,
                      head_weight=1 if runner.quant == "int4" else None,
                      head_per_channel=8 if runner.quant == "int4" else None)
    result["storage"] = dataclasses.asdict(storage)
    result["dtype"] = str(runner.quant or runner.dtype).replace("torch.", "") + (" + int8 KV" if int8_kv else "")
    result["notes"] = f"weights from {'the prepared-weights cache' if runner.weights_source != 'checkpoint' else 'the checkpoint'}"
    return result


def spec_counters(before: dict, after: dict) -> dict:
    """Speculative decoding's counters over the runs between two engine stats (the warm-up and
    prefill-only runs draft next to nothing: one and four new tokens)."""
    drafts, proposed, accepted = (after[k] - before[k] for k in (
        "spec_num_drafts", "spec_num_draft_tokens", "spec_num_accepted_tokens"))
    return {"draft_tokens": proposed, "accepted_tokens": accepted,
            "acceptance_rate": accepted / proposed if proposed else 0.0,
            "mean_accepted_length": 1 + accepted / drafts if drafts else 0.0}


def run_transformers(spec: dict, prompts: PromptSets) -> dict:
    """transformers generate() in bf16 (its fastest mode on this CPU), left-padded batches."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16).eval()
    pad_id = spec["pad_id"]

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

    result = time_runs(run, prompts, spec["max_tokens"], spec["background_load"])
    result["storage"] = dataclasses.asdict(Storage(weight=2, per_channel=0, act=2, kv=2))
    result["dtype"] = "bfloat16"
    return result


def convert_ctranslate2(model: str, out: Path) -> Path:
    """Convert a checkpoint with CTranslate2's own converter, int8 weights (cached in out)."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise ValueError(f"compare: ctranslate2 is not installed (pip install ctranslate2, or {BENCH_EXTRA})") from None
    if not (out / "model.bin").is_file():
        TransformersConverter(model).convert(str(out), quantization="int8", force=True)
    return out


def run_ctranslate2(spec: dict, prompts: PromptSets) -> dict:
    """CTranslate2 Generator.generate_batch, int8 (its fastest mode on this CPU), greedy."""
    import ctranslate2

    threads = len(os.sched_getaffinity(0))
    gen = ctranslate2.Generator(spec["ct2_dir"], device="cpu", compute_type="int8",
                                inter_threads=1, intra_threads=threads)
    vocab = _ct2_vocabulary(Path(spec["ct2_dir"]))

    def run(batch, num_tokens):
        tokens = [[vocab[i] for i in p] for p in batch]
        res = gen.generate_batch(tokens, max_length=num_tokens, min_length=num_tokens,
                                 sampling_topk=1, beam_size=1, include_prompt_in_result=False)
        assert all(len(r.sequences_ids[0]) == num_tokens for r in res)

    result = time_runs(run, prompts, spec["max_tokens"], spec["background_load"])
    # compute_type int8 on a CPU: int8 weights with an fp32 scale per row, fp32 activations and cache.
    result["storage"] = dataclasses.asdict(Storage(weight=1, per_channel=4, act=4, kv=4))
    result["dtype"] = "int8"
    return result


def _ct2_vocabulary(ct2_dir: Path) -> list[str]:
    import json
    for name in ("vocabulary.json", "shared_vocabulary.json"):
        if (ct2_dir / name).is_file():
            return json.loads((ct2_dir / name).read_text())
    return (ct2_dir / "vocabulary.txt").read_text().split("\n")
