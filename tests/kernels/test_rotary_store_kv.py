"""rotary_store_kv (C++ and Triton) against the torch reference: interleaved and NeoX rotary on part
or all of each head, no rotary (GPT-Neo), strided q/k/v views, slot -1 skipped, NaN-poisoned caches."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import assert_close
from kernels import reference

# (num_tokens, num_heads, num_kv_heads, head_dim, rotary_dim, block_size)
CPU_SHAPES = [(1, 2, 2, 64, 32, 16), (7, 4, 4, 80, 80, 8), (97, 3, 3, 32, 16, 32), (300, 2, 1, 64, 64, 16),
              (13, 2, 2, 64, 0, 8)]
TRITON_SHAPES = [(1, 2, 2, 64, 32, 16), (7, 2, 1, 80, 80, 8), (13, 2, 2, 32, 16, 32), (5, 2, 2, 16, 0, 8)]
DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)]
DTYPE_IDS = ["fp32", "bf16", "fp32-bf16cache"]


def _inputs(num_tokens, num_heads, num_kv_heads, head_dim, rotary_dim, block_size, dtype, cache_dtype):
    # q, k, v are views of one fused projection output, as the engine hands them over.
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim).to(dtype)
    q, k, v = qkv.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    num_blocks = (num_tokens + block_size - 1) // block_size + 2
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[torch.rand(num_tokens) < 0.2] = -1  # skipped tokens (e.g. padding)
    positions = torch.randint(0, 2048, (num_tokens,))
    cos_sin = reference.rotary_cos_sin(rotary_dim, 2048) if rotary_dim else None
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=cache_dtype)
    v_cache = torch.full(shape, float("nan"), dtype=cache_dtype)
    return qkv, q, k, v, positions, cos_sin, k_cache, v_cache, slots


def _run(ops, shape, dtype, cache_dtype, interleaved):
    rotary_dim = shape[4]
    qkv, q, k, v, positions, cos_sin, k_cache, v_cache, slots = _inputs(*shape, dtype, cache_dtype)
    ref_qkv, ref_k_cache, ref_v_cache = qkv.clone(), k_cache.clone(), v_cache.clone()
    ref_q, ref_k, ref_v = ref_qkv.split([q.shape[1], k.shape[1], k.shape[1]], dim=1)
    reference.rotary_store_kv(ref_q, ref_k, ref_v, positions, cos_sin, rotary_dim, interleaved,
                              ref_k_cache, ref_v_cache, slots)
    ops.rotary_store_kv(q, k, v, positions, cos_sin, rotary_dim, interleaved, k_cache, v_cache, slots)

    assert_close(q, ref_q, "q")
    assert_close(k, ref_k, "k")
    assert torch.equal(v, ref_v), "v must not change"
    assert torch.equal(q[..., rotary_dim:], ref_q[..., rotary_dim:]), "q beyond rotary_dim must not change"
    # Data movement is exact: the cache holds this op's own rotated k and v, and nothing else.
    flat_k, flat_v = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    keep = slots >= 0
    assert torch.equal(flat_k[slots[keep]], k[keep].to(cache_dtype))
    assert torch.equal(flat_v[slots[keep]], v[keep].to(cache_dtype))
    untouched = torch.ones(flat_k.shape[0], dtype=torch.bool)
    untouched[slots[keep]] = False
    assert flat_k[untouched].isnan().all() and flat_v[untouched].isnan().all(), "wrote outside its slots"
    if rotary_dim == 0:
        assert torch.equal(k_cache.nan_to_num(7.0), ref_k_cache.nan_to_num(7.0))


@pytest.mark.parametrize("interleaved", [True, False], ids=["gptj", "neox"])
@pytest.mark.parametrize("dtypes", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
def test_rotary_store_kv_cpu(shape, dtypes, interleaved, cpu_ops):
    _run(cpu_ops, shape, *dtypes, interleaved)


@pytest.mark.parametrize("interleaved", [True, False], ids=["gptj", "neox"])
@pytest.mark.parametrize("dtypes", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
def test_rotary_store_kv_triton(shape, dtypes, interleaved, triton_ops):
    _run(triton_ops, shape, *dtypes, interleaved)


def test_rotary_store_kv_rejects_bad_inputs(backend):
    name, ops = backend
    qkv, q, k, v, positions, cos_sin, k_cache, v_cache, slots = _inputs(5, 2, 2, 32, 16, 8,
                                                                        torch.float32, torch.float32)
    args = dict(q=q, k=k, v=v, positions=positions, cos_sin=cos_sin, rotary_dim=16, interleaved=True,
                k_cache=k_cache, v_cache=v_cache, slot_mapping=slots)
    bad = [
        (TypeError, "q", dict(q=q.double())),
        (TypeError, "k", dict(k=k.bfloat16())),
        (ValueError, "k", dict(k=k[:, :1])),
        (ValueError, "rotary_dim", dict(rotary_dim=15)),
        (ValueError, "rotary_dim", dict(rotary_dim=64)),
        (ValueError, "cos_sin", dict(cos_sin=cos_sin[:, :8])),
        (ValueError, "slot_mapping", dict(slot_mapping=slots[:3])),
        (ValueError, "v_cache", dict(v_cache=v_cache[:1])),
        (ValueError, "q", dict(q=torch.randn(5, 32, 2).transpose(1, 2))),  # head_dim not dense
    ]
    if name == "cpu":  # bounds of gathered indices are checked on the host by the C++ op
        bad.append((ValueError, "slot_mapping", dict(slot_mapping=torch.full_like(slots, 10_000))))
    for exc, match, change in bad:
        with pytest.raises(exc, match=match):
            ops.rotary_store_kv(**{**args, **change})
