"""paged_attention (C++ and Triton) against the gathering torch reference: prefill, chunked prefill
and decode rows mixed in one step, odd lengths, windows crossed, GQA, several block sizes/head dims."""
from __future__ import annotations

import math

import pytest
import torch

from kernel_helpers import assert_close, filled_caches, nan_poisoned_empty, random_block_tables
from kernels import reference
from tests.kernels.cases import ATTENTION_CASES

# ATTENTION_CASES (every backend, and benchmarks/gpu_check.py on a GPU), then the C++ paths' own
CPU_CASES = ATTENTION_CASES + [
    ("tiny_window", [(40, 40), (23, 1), (30, 9)], 8, 2, 2, 32, 5, 1.0),  # window < query tile
    # head_dim 64 / 128 take the bf16 vdpbf16ps paths: blocks of 32 keys, windows inside a tile
    ("prefill_block32", [(97, 97), (45, 20), (300, 1)], 32, 2, 2, 64, 0, None),
    ("tiny_window_64", [(40, 40), (23, 1), (30, 9)], 8, 3, 3, 64, 5, 1.0),
    ("window_128", [(300, 300), (260, 17)], 16, 2, 1, 128, 256, None),
    # long decode rows split into key chunks across threads and merged (flash-decoding)
    ("decode_long", [(1900, 1)], 16, 4, 4, 64, 0, 1.0),  # scale 1: chunks with far-apart maxima
    ("decode_long_gqa", [(700, 1), (300, 1), (129, 1)], 16, 4, 2, 80, 0, 0.5),
    ("decode_long_window", [(1000, 1), (1000, 3)], 16, 2, 2, 64, 256, 1.0),
    # head dims off the vector width (scalar loops), blocks that chunks cannot align to
    ("odd_dim_block", [(97, 97), (600, 1), (45, 1)], 7, 2, 2, 20, 0, None),
    ("dim48_block24", [(1000, 1), (513, 1), (50, 50)], 24, 3, 3, 48, 0, None),
]
# The interpreter runs every program in Python: short sequences, few heads, small windows.
TRITON_CASES = [
    ("decode", [(1, 1), (7, 1), (40, 1)], 16, 2, 2, 64, 0, 0.125),
    ("prefill_window", [(7, 7), (37, 37)], 8, 2, 2, 80, 16, 1.0),
    ("mixed_gqa", [(45, 13), (9, 1), (4, 0), (3, 3)], 32, 4, 2, 32, 0, None),
    ("small_window", [(50, 1), (41, 20)], 8, 2, 2, 16, 16, 1.0),
    ("tiny_window", [(20, 20), (9, 1)], 8, 2, 2, 16, 5, 1.0),
]
DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
          (torch.float32, torch.bfloat16)]  # (q dtype, cache dtype)


def _inputs(seqs, block_size, num_heads, num_kv_heads, head_dim, q_dtype, cache_dtype):
    seq_lens = [s for s, _ in seqs]
    tables, num_blocks = random_block_tables(seq_lens, block_size)
    k_cache, v_cache = filled_caches(seq_lens, tables, num_blocks, block_size, num_kv_heads, head_dim,
                                     cache_dtype)
    cu = torch.tensor([0] + [q for _, q in seqs], dtype=torch.int32).cumsum(0).to(torch.int32)
    # q as a strided view of a fused projection output, as the engine hands it over.
    qkv = torch.randn(int(cu[-1]), num_heads + 2 * num_kv_heads, head_dim).to(q_dtype)
    q = qkv[:, :num_heads]
    return q, k_cache, v_cache, tables, torch.tensor(seq_lens, dtype=torch.int32), cu


def _poison_outside_window(k_cache, v_cache, tables, seqs, block_size, window):
    """NaN into blocks wholly before every query's window: a kernel that reads them fails."""
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    for b, (seq_len, q_len) in enumerate(seqs):
        first_key = max(0, seq_len - q_len - window + 1)
        for blk in range(first_key // block_size):
            k_cache[tables[b, blk]] = float("nan")
            v_cache[tables[b, blk]] = float("nan")
    return k_cache, v_cache


def _run_case(ops, case, q_dtype, cache_dtype):
    name, seqs, block_size, num_heads, num_kv_heads, head_dim, window, scale = case
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    q, k_cache, v_cache, tables, seq_lens, cu = _inputs(seqs, block_size, num_heads, num_kv_heads,
                                                        head_dim, q_dtype, cache_dtype)
    expected = reference.paged_attention(q, k_cache, v_cache, tables, seq_lens, cu, scale, window)
    if window > 0:
        k_cache, v_cache = _poison_outside_window(k_cache, v_cache, tables, seqs, block_size, window)
    with nan_poisoned_empty():
        actual = ops.paged_attention(q, k_cache, v_cache, tables, seq_lens, cu, scale, window)
    assert_close(actual, expected, f"paged_attention[{name}]")


@pytest.mark.parametrize("dtypes", DTYPES, ids=["fp32", "bf16", "fp32q-bf16cache"])
@pytest.mark.parametrize("case", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_paged_attention_cpu(case, dtypes, cpu_ops):
    _run_case(cpu_ops, case, *dtypes)


@pytest.mark.parametrize("dtypes", DTYPES[:2], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", TRITON_CASES, ids=[c[0] for c in TRITON_CASES])
def test_paged_attention_triton(case, dtypes, triton_ops):
    _run_case(triton_ops, case, *dtypes)


@pytest.mark.parametrize("num_threads", [1, 3])
def test_split_decode_any_thread_count(num_threads, cpu_ops):
    """Long decode rows are split into pieces; the result is right whatever the thread count."""
    case = ("decode_long_gqa", [(700, 1), (1300, 1)], 16, 4, 2, 64, 0, 1.0)
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        _run_case(cpu_ops, case, torch.bfloat16, torch.bfloat16)
    finally:
        torch.set_num_threads(before)


def test_thread_count_changes_no_bit(cpu_ops):
    """The split of a decode row follows the processors, not the team: the engine's thread count
    (which follows the load) changes no result."""
    inputs = _inputs([(700, 1), (1300, 1), (37, 5), (3, 1)], 16, 4, 2, 64, torch.bfloat16, torch.bfloat16)
    before = torch.get_num_threads()
    try:
        outs = []
        for num_threads in (1, 2, 3):
            torch.set_num_threads(num_threads)
            outs.append(cpu_ops.paged_attention(*inputs, 0.125))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_decode_rows_equal_prefill_rows(backend):
    """A sequence's last row gives the same result as a decode row or as part of a prefill."""
    _, ops = backend
    q, k_cache, v_cache, tables, seq_lens, cu = _inputs([(23, 23)], 8, 2, 2, 32, torch.float32,
                                                        torch.float32)
    full = ops.paged_attention(q, k_cache, v_cache, tables, seq_lens, cu, 1.0, 0)
    one = ops.paged_attention(q[-1:], k_cache, v_cache, tables, seq_lens,
                              torch.tensor([0, 1], dtype=torch.int32), 1.0, 0)
    torch.testing.assert_close(one[0], full[-1], atol=1e-5, rtol=1e-5)


def test_paged_attention_rejects_bad_inputs(backend):
    _, ops = backend
    q, k_cache, v_cache, tables, seq_lens, cu = _inputs([(9, 3)], 8, 2, 2, 16, torch.float32,
                                                        torch.float32)
    with pytest.raises(TypeError, match="q"):
        ops.paged_attention(q.double(), k_cache, v_cache, tables, seq_lens, cu, 1.0, 0)
    with pytest.raises(ValueError, match="q"):
        ops.paged_attention(q[:, 0], k_cache, v_cache, tables, seq_lens, cu, 1.0, 0)
    with pytest.raises(ValueError, match="k_cache"):
        ops.paged_attention(q, k_cache[..., :8].contiguous(), v_cache[..., :8].contiguous(), tables,
                            seq_lens, cu, 1.0, 0)
    with pytest.raises(ValueError, match="k_cache"):
        ops.paged_attention(q, k_cache.transpose(0, 1), v_cache, tables, seq_lens, cu, 1.0, 0)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        ops.paged_attention(q, k_cache, v_cache, tables, seq_lens, cu[:1], 1.0, 0)
    with pytest.raises(ValueError, match="window"):
        ops.paged_attention(q, k_cache, v_cache, tables, seq_lens, cu, 1.0, -1)


def test_cpu_paged_attention_rejects_bad_metadata():
    from kernels import cpu
    q, k_cache, v_cache, tables, seq_lens, cu = _inputs([(9, 3)], 8, 2, 2, 16, torch.float32,
                                                        torch.float32)
    with pytest.raises(ValueError, match="block_tables"):
        cpu.paged_attention(q, k_cache, v_cache, tables.fill_(999), seq_lens, cu, 1.0, 0)
    with pytest.raises(ValueError, match="seq_lens"):
        cpu.paged_attention(q, k_cache, v_cache, tables, torch.tensor([2], dtype=torch.int32), cu, 1.0, 0)
