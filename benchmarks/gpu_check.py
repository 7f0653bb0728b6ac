"""GPU readiness: `make gpu-check` (or `python -m benchmarks.gpu_check` from the repository root).

On a machine with a CUDA GPU it runs, for real on CUDA tensors:
  1. every Triton kernel (kernels/triton.py) against the torch reference (kernels/reference.py),
     odd shapes, fp32 / bf16 / fp16;
  2. the engine's greedy tokens against transformers' on the GPU, fp32, tiny random checkpoints of
     both architectures (CodeGen and GPT-Neo with a local window the prompts cross);
  3. paged decode attention's achieved bandwidth as a fraction of a measured device copy;
  4. end-to-end generated tokens/s against transformers on the same GPU (random weights with
     CodeGen-350M's shapes, bf16);
prints one table and exits 1 on any mismatch or error (3 and 4 are figures, not pass/fail). About
2-4 minutes on one GPU, mostly Triton compiles and building the 350M checkpoint. Without CUDA it
says so and exits 0 without running anything."""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.kernels.cases import ATTENTION_CASES as TEST_ATTENTION_CASES

# (atol, rtol) by dtype. fp32 differs from the reference in summation order only; bf16 / fp16
# attention multiplies the probabilities in the input dtype (one rounding) before the output's own.
TOLERANCES = {torch.float32: (2e-5, 1e-4), torch.bfloat16: (1e-2, 1.6e-2), torch.float16: (2e-3, 4e-3)}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# gated_embedding: (num_tokens, vocab, hidden, with_wpe); hidden 1030 spans two column blocks.
EMBEDDING_CASES = [(1, 97, 48, True), (7, 97, 80, False), (300, 1031, 1030, True)]
# rotary_store_kv: (num_tokens, num_heads, num_kv_heads, head_dim, rotary_dim, block_size)
ROTARY_CASES = [(1, 2, 2, 64, 32, 16), (7, 4, 4, 80, 80, 8), (97, 3, 3, 32, 16, 32),
                (300, 16, 16, 64, 32, 16), (13, 2, 1, 64, 0, 8)]
# paged_attention: the kernel tests' shared cases, and a long decode over local windows.
ATTENTION_CASES = [*TEST_ATTENTION_CASES, ("long_decode", [(1900, 1), (1023, 1), (1024, 1)], 16, 16, 16, 64, 256, 1.0)]
NO_CUDA = ("gpu-check: torch {version} sees no CUDA device (CUDA build: {cuda}); nothing to check. "
           "On a GPU machine, run it with a CUDA build of torch: make gpu-check GPU_PYTHON=/path/to/python")


@dataclass
class Row:
    check: str
    case: str
    ok: bool | None  # None: a figure, not pass/fail
    detail: str


def compare(actual: torch.Tensor, expected: torch.Tensor, equal_nan: bool = False) -> tuple[bool, str]:
    """(within the dtype's tolerance, how far off); NaN matches NaN only with equal_nan (the
    poisoned cache slots that neither implementation writes)."""
    atol, rtol = TOLERANCES[expected.dtype]
    a, e = actual.float(), expected.float()
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=equal_nan)
    err = (a - e).abs().nan_to_num(0.0 if equal_nan else float("inf"))
    worst = float(err.max()) if err.numel() else 0.0
    return not bool(bad.any()), f"max |diff| {worst:.2e}, {int(bad.sum())}/{bad.numel()} outside"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_embedding(ops, ref, device, case, dtype) -> tuple[bool, str]:
    num_tokens, vocab, hidden, with_wpe = case
    ids = torch.randint(0, vocab, (num_tokens,), device=device)
    modality = torch.randint(0, 2, (num_tokens,), device=device)
    remap = torch.randperm(vocab, device=device)
    wte = torch.randn(vocab, hidden, device=device).to(dtype)
    wpe = torch.randn(512, hidden, device=device).to(dtype) if with_wpe else None
    positions = torch.randint(0, 512, (num_tokens,), device=device)
    args = (ids, modality, remap, wte, wpe, positions)
    return compare(ops.gated_embedding(*args), ref.gated_embedding(*args))


def check_rotary(ops, ref, device, case, dtype, interleaved) -> tuple[bool, str]:
    num_tokens, num_heads, num_kv_heads, head_dim, rotary_dim, block_size = case
    # q, k, v as views of one fused projection output, as the engine hands them over.
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim, device=device).to(dtype)
    num_blocks = -(-num_tokens // block_size) + 2
    slots = torch.randperm(num_blocks * block_size, device=device)[:num_tokens]
    slots[torch.rand(num_tokens, device=device) < 0.2] = -1  # skipped tokens
    positions = torch.randint(0, 2048, (num_tokens,), device=device)
    cos_sin = ref.rotary_cos_sin(rotary_dim, 2048).to(device) if rotary_dim else None
    cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    outs = []
    for impl in (ops, ref):
        x, k_cache, v_cache = qkv.clone(), cache.clone(), cache.clone()
        q, k, v = x.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
        impl.rotary_store_kv(q, k, v, positions, cos_sin, rotary_dim, interleaved, k_cache, v_cache, slots)
        outs.append((x, k_cache, v_cache))
    results = [compare(a, e, equal_nan=i > 0) for i, (a, e) in enumerate(zip(*outs))]
    names = ("q/k", "k_cache", "v_cache")
    return all(ok for ok, _ in results), "; ".join(f"{n} {d}" for n, (_, d) in zip(names, results))


def check_attention(ops, ref, device, case, dtype) -> tuple[bool, str]:
    _, seqs, block_size, num_heads, num_kv_heads, head_dim, window, scale = case
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    need = [-(-s // block_size) for s, _ in seqs]
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, dtype=torch.int32)  # scattered blocks, as after preemptions
    tables = torch.zeros(len(seqs), max(need) + 1, dtype=torch.int32)
    for b, start in enumerate([sum(need[:i]) for i in range(len(need))]):
        tables[b, :need[b]] = perm[start:start + need[b]]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = (torch.randn(shape, device=device).to(dtype) for _ in range(2))
    cu = torch.tensor([0] + [q for _, q in seqs], device=device).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), num_heads + 2 * num_kv_heads, head_dim, device=device).to(dtype)[:, :num_heads]
    args = (q, k_cache, v_cache, tables.to(device), torch.tensor([s for s, _ in seqs], dtype=torch.int32,
                                                                 device=device), cu, scale, window)
    return compare(ops.paged_attention(*args), ref.paged_attention(*args))


def _guarded(check: str, case: str, fn) -> Row:
    """fn() -> (ok, detail) as a row; an exception is a failed row, and the other checks go on."""
    try:
        ok, detail = fn()
    except Exception as e:
        traceback.print_exc()
        ok, detail = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return Row(check, case, ok, detail)


def kernel_rows(ops, ref, device) -> list[Row]:
    rows = []
    for dtype in DTYPES:
        name = _dtype_name(dtype)
        for case in EMBEDDING_CASES:
            rows.append(_guarded("gated_embedding", f"{case} {name}",
                                 lambda: check_embedding(ops, ref, device, case, dtype)))
        for case in ROTARY_CASES:
            for interleaved in (True, False):
                rows.append(_guarded("rotary_store_kv", f"{case} {'gptj' if interleaved else 'neox'} {name}",
                                     lambda: check_rotary(ops, ref, device, case, dtype, interleaved)))
        for case in ATTENTION_CASES:
            rows.append(_guarded("paged_attention", f"{case[0]} {name}",
                                 lambda: check_attention(ops, ref, device, case, dtype)))
    return rows


@torch.no_grad()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, sample_vocab: int, device) -> list[int]:
    """transformers greedy with its KV cache, never picking ids >= sample_vocab (as the engine)."""
    out = model(torch.tensor([prompt_ids], device=device), use_cache=True)
    new: list[int] = []
    for _ in range(max_new_tokens):
        new.append(int(out.logits[0, -1, :sample_vocab].argmax()))
        out = model(torch.tensor([new[-1:]], device=device), past_key_values=out.past_key_values, use_cache=True)
    return new


def _parity(path: Path, device, max_tokens: int = 24) -> tuple[bool, str]:
    from transformers import AutoModelForCausalLM

    from engine import LLM, SamplingParams
    llm = LLM(str(path), dtype="float32", device=device, attention_backend="triton")
    vocab = llm.engine.runner.sample_vocab_size
    gen = torch.Generator().manual_seed(0)
    # Lengths 5, 40 and 300: the tiny GPT-Neo's local window (16) is crossed by the longer two.
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (5, 40, 300)]
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    ours = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    del llm
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
    theirs = [hf_greedy(hf, p, max_tokens, vocab, device) for p in prompts]
    same = sum(a == b for a, b in zip(ours, theirs))
    return same == len(prompts), f"{same}/{len(prompts)} prompts (5, 40, 300 tokens): the same {max_tokens} tokens"


def parity_rows(device) -> list[Row]:
    from tests.checkpoints import make_codegen, make_gpt_neo
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("codegen", make_codegen), ("gpt-neo", make_gpt_neo)):
            rows.append(_guarded("greedy vs transformers", f"tiny {name} fp32",
                                 lambda: _parity(make(Path(tmp) / name), device)))
    return rows


def cuda_seconds(fn, repeats: int = 20) -> float:
    """Median seconds of fn on the current stream (CUDA events), after a warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def attention_bandwidth(ops, device, num_seqs: int = 64, seq_len: int = 2048, num_heads: int = 16,
                        head_dim: int = 64, block_size: int = 16) -> tuple[None, str]:
    """Decode rows of num_seqs sequences over shuffled bf16 blocks: K + V bytes / time, against a
    1 GiB device copy (bytes read + written)."""
    blocks = seq_len // block_size
    tables = torch.randperm(num_seqs * blocks, device=device).to(torch.int32).view(num_seqs, blocks)
    shape = (num_seqs * blocks, block_size, num_heads, head_dim)
    k_cache, v_cache = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(2))
    q = torch.randn(num_seqs, num_heads, head_dim, device=device, dtype=torch.bfloat16)
    seq_lens = torch.full((num_seqs,), seq_len, dtype=torch.int32, device=device)
    cu = torch.arange(num_seqs + 1, dtype=torch.int32, device=device)
    attn_s = cuda_seconds(lambda: ops.paged_attention(q, k_cache, v_cache, tables, seq_lens, cu, 0.125))
    attn_gbs = 2 * k_cache.numel() * k_cache.element_size() / attn_s / 1e9
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / cuda_seconds(lambda: dst.copy_(src)) / 1e9
    return None, f"{attn_gbs:.0f} GB/s = {attn_gbs / copy_gbs:.0%} of the device copy's {copy_gbs:.0f} GB/s"


def format_rows(rows: list[Row], seconds: float) -> str:
    width = max(len(r.check) for r in rows)
    case_width = max(len(r.case) for r in rows)
    lines = [f"{'check':<{width}}  {'case':<{case_width}}  result  detail"]
    for r in rows:
        result = "-" if r.ok is None else ("ok" if r.ok else "FAIL")
        lines.append(f"{r.check:<{width}}  {r.case:<{case_width}}  {result:<6}  {r.detail}")
    failed = sum(r.ok is False for r in rows)
    lines.append(f"{sum(r.ok is True for r in rows)} ok, {failed} failed, {seconds:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end tokens/s comparison")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA.format(version=torch.__version__, cuda=torch.version.cuda or "none"))
        return 0
    from benchmarks.gpu_e2e import end_to_end_rows
    from kernels import reference
    from kernels import triton as triton_ops
    if triton_ops.INTERPRETED:
        print("gpu-check: TRITON_INTERPRET is set, so Triton would not compile for the GPU; unset it")
        return 2
    # IEEE fp32 matmuls in the reference, as the Triton kernels use for fp32 (TF32 would need
    # looser tolerances and hide real errors).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    start = time.perf_counter()
    rows = kernel_rows(triton_ops, reference, "cuda") + parity_rows("cuda")
    rows.append(_guarded("decode attention bandwidth", "64 x 2048 keys, 16 x 64 heads, bf16",
                         lambda: attention_bandwidth(triton_ops, "cuda")))
    if not args.skip_e2e:
        rows += end_to_end_rows("cuda", _guarded)
    print(format_rows(rows, time.perf_counter() - start))
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
