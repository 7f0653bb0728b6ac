"""int8 KV cache (kv_cache_dtype="int8", C++ kernels): rotary_store_kv quantizes each (slot, kv head)
row with its own scale, and paged_attention over int8 rows and scales matches the torch reference
on the same int8 cache. Unused slots and blocks outside a window get NaN scales: reading them fails."""
from __future__ import annotations

import math

import pytest
import torch

from kernel_helpers import assert_close, filled_caches, random_block_tables
from kernels import reference

# (name, [(seq_len, q_len), ...], block_size, num_heads, num_kv_heads, head_dim, window)
CASES = [
    ("decode", [(1, 1), (7, 1), (97, 1), (300, 1)], 16, 4, 4, 64, 0),
    ("prefill_window", [(7, 7), (97, 97), (300, 300)], 8, 2, 2, 80, 256),
    ("mixed_gqa", [(300, 45), (97, 1), (5, 0), (33, 20)], 32, 4, 2, 128, 0),
    ("small_window", [(97, 97), (300, 1), (300, 30)], 16, 2, 2, 64, 16),
    ("odd_dim", [(40, 40), (23, 1)], 8, 3, 3, 48, 5),
    ("decode_long", [(1900, 1), (700, 1)], 16, 4, 2, 64, 0),  # key chunks merged across threads
]


def _int8_caches(seqs, block_size, num_kv_heads, head_dim, window):
    seq_lens = [s for s, _ in seqs]
    tables, num_blocks = random_block_tables(seq_lens, block_size)
    k, v = filled_caches(seq_lens, tables, num_blocks, block_size, num_kv_heads, head_dim, torch.float32)
    (k8, k_scale), (v8, v_scale) = reference.quantize_kv_rows(k), reference.quantize_kv_rows(v)
    assert k_scale.isnan().any()  # unused slots (NaN rows) have NaN scales
    for b, (seq_len, q_len) in enumerate(seqs):  # blocks wholly before every query's window
        first_key = max(0, seq_len - q_len - window + 1) if window else 0
        for blk in range(first_key // block_size):
            k_scale[tables[b, blk]] = float("nan")
            v_scale[tables[b, blk]] = float("nan")
    return k8, v8, k_scale, v_scale, tables, seq_lens


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_paged_attention_int8_cache(case, q_dtype, cpu_ops):
    name, seqs, block_size, num_heads, num_kv_heads, head_dim, window = case
    k8, v8, k_scale, v_scale, tables, seq_lens = _int8_caches(seqs, block_size, num_kv_heads, head_dim, window)
    cu = torch.tensor([0] + [q for _, q in seqs], dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), num_heads, head_dim).to(q_dtype)
    seq_lens = torch.tensor(seq_lens, dtype=torch.int32)
    scale = 1.0 / math.sqrt(head_dim)
    args = (q, k8, v8, tables, seq_lens, cu, scale, window)
    expected = reference.paged_attention(*args, k_scale=k_scale.nan_to_num(0.0), v_scale=v_scale.nan_to_num(0.0))
    actual = cpu_ops.paged_attention(*args, k_scale=k_scale, v_scale=v_scale)
    assert_close(actual, expected, f"paged_attention[{name}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rotary_dim", [0, 32, 64])
def test_rotary_store_kv_int8_cache(rotary_dim, dtype, cpu_ops):
    num_tokens, num_heads, num_kv_heads, head_dim, block_size = 37, 4, 2, 64, 16
    num_blocks = 5
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim).to(dtype)
    qkv[3, num_heads] = 0  # a k row of zeros: scale 0
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[torch.rand(num_tokens) < 0.2] = -1
    positions = torch.randint(0, 512, (num_tokens,))
    cos_sin = reference.rotary_cos_sin(rotary_dim, 512) if rotary_dim else None
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    caches = [torch.zeros(shape, dtype=torch.int8) for _ in range(2)]
    scales = [torch.full(shape[:3], float("nan")) for _ in range(2)]
    results = []
    for ops in (reference, cpu_ops):
        x = qkv.clone()
        q, k, v = x.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
        kc, vc = caches[0].clone(), caches[1].clone()
        ks, vs = scales[0].clone(), scales[1].clone()
        ops.rotary_store_kv(q, k, v, positions, cos_sin, rotary_dim, True, kc, vc, slots, k_scale=ks, v_scale=vs)
        results.append((x, kc, vc, ks, vs))
    (rx, rkc, rvc, rks, rvs), (x, kc, vc, ks, vs) = results
    assert_close(x, rx, "qkv")
    for name, got, want in (("k_cache", kc, rkc), ("v_cache", vc, rvc)):
        diff = (got.int() - want.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, f"{name}: {int((diff > 0).sum())} values differ"
    for name, got, want in (("k_scale", ks, rks), ("v_scale", vs, rvs)):
        assert torch.equal(got.isnan(), want.isnan()), f"{name}: wrote outside its slots"
        assert_close(got.nan_to_num(0.0), want.nan_to_num(0.0), name)
    flat = ks.flatten(0, 1)  # [slots, kv_heads]
    assert (flat[slots[slots >= 0]] >= 0).all()
    if slots[3] >= 0:
        assert flat[slots[3], 0] == 0  # token 3's k row of zeros


def test_int8_cache_needs_scales(cpu_ops, backend):
    q = torch.randn(2, 2, 16)
    k8 = torch.zeros(4, 8, 2, 16, dtype=torch.int8)
    ks = torch.ones(4, 8, 2)
    tables = torch.zeros(2, 1, dtype=torch.int32)
    lens, cu = torch.tensor([1, 1], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32)
    with pytest.raises(ValueError, match="k_scale"):
        cpu_ops.paged_attention(q, k8, k8, tables, lens, cu, 1.0)
    with pytest.raises(ValueError, match="k_scale"):
        cpu_ops.paged_attention(q, k8.float(), k8.float(), tables, lens, cu, 1.0, k_scale=ks, v_scale=ks)
    with pytest.raises(ValueError, match="v_scale"):
        cpu_ops.paged_attention(q, k8, k8, tables, lens, cu, 1.0, k_scale=ks, v_scale=ks[:3])
    name, ops = backend
    if name == "triton":
        with pytest.raises(ValueError, match="int8"):
            ops.paged_attention(q, k8, k8, tables, lens, cu, 1.0, k_scale=ks, v_scale=ks)
