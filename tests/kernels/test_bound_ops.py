"""The bound forms of the ops (a layer's fixed operands checked once, a step's rows per call):
every backend's bind_* gives the functional op's results, over several calls, and the C++ ones
reject bad fixed operands when binding, keep them alive, and check every call's rows."""
from __future__ import annotations

import gc
import importlib

import pytest
import torch

from kernels import reference
from tests.kernels.kernel_helpers import filled_caches, random_block_tables


@pytest.fixture(params=["reference", "cpu", "triton"])
def ops(request):
    if request.param == "triton":
        return request.getfixturevalue("triton_ops")
    return importlib.import_module(f"kernels.{request.param}")


def _step(seq_lens, q_lens, tables, num_heads, head_dim):
    cu = torch.tensor([0, *q_lens]).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), num_heads, head_dim)
    return q, tables, torch.tensor(seq_lens, dtype=torch.int32), cu


def test_bound_attention_equals_functional_over_steps(ops):
    block_size, num_kv_heads, head_dim = 8, 2, 16
    tables, num_blocks = random_block_tables([40, 13], block_size)
    k_cache, v_cache = filled_caches([40, 13], tables, num_blocks, block_size, num_kv_heads, head_dim,
                                     torch.float32)
    attend = ops.bind_paged_attention(k_cache, v_cache, 0.25, 0)
    for seq_lens, q_lens in (([40, 13], [40, 13]), ([40, 13], [1, 1]), ([27, 13], [3, 1])):
        q, t, s, cu = _step(seq_lens, q_lens, tables, 4, head_dim)
        expected = reference.paged_attention(q, k_cache, v_cache, t, s, cu, 0.25, 0)
        torch.testing.assert_close(attend(q, t, s, cu), expected, atol=1e-5, rtol=1e-5)


def test_bound_rotary_equals_functional_over_steps(ops):
    num_blocks, block_size, num_kv_heads, head_dim, rotary_dim = 6, 4, 2, 16, 8
    cos_sin = reference.rotary_cos_sin(rotary_dim, 64)
    caches = [torch.zeros(num_blocks, block_size, num_kv_heads, head_dim) for _ in range(4)]
    store = ops.bind_rotary_store_kv(cos_sin, rotary_dim, True, caches[0], caches[1])
    for positions, slots in (([0, 1, 2], [0, 1, 2]), ([3], [3]), ([7, 9], [11, -1])):
        q = torch.randn(len(slots), 4, head_dim)
        k, v = torch.randn(len(slots), num_kv_heads, head_dim), torch.randn(len(slots), num_kv_heads, head_dim)
        q_ref, k_ref = q.clone(), k.clone()
        store(q, k, v, torch.tensor(positions), torch.tensor(slots))
        reference.rotary_store_kv(q_ref, k_ref, v, torch.tensor(positions), cos_sin, rotary_dim, True,
                                  caches[2], caches[3], torch.tensor(slots))
        torch.testing.assert_close(q, q_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(caches[0], caches[2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(caches[1], caches[3], atol=1e-6, rtol=1e-6)


def test_cpu_binding_rejects_bad_fixed_operands(cpu_ops):
    cache = torch.zeros(4, 8, 2, 16)
    with pytest.raises(ValueError, match="window"):
        cpu_ops.bind_paged_attention(cache, cache.clone(), 1.0, -1)
    with pytest.raises(ValueError, match="k_cache"):
        cpu_ops.bind_paged_attention(cache.transpose(0, 1), cache.clone(), 1.0, 0)
    with pytest.raises(ValueError, match="k_scale"):
        cpu_ops.bind_paged_attention(cache.to(torch.int8), cache.to(torch.int8), 1.0, 0)
    with pytest.raises(ValueError, match="rotary_dim"):
        cpu_ops.bind_rotary_store_kv(None, 3, True, cache, cache.clone())
    w8 = torch.randint(-127, 128, (20, 12), dtype=torch.int8)
    packed, colsum = reference.pack_int8_weight(w8)
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.bind_int8_linear(packed, colsum, torch.ones(20), 40)
    with pytest.raises(ValueError, match="bias"):
        cpu_ops.bind_int8_linear(packed, colsum, torch.ones(20), 12, bias=torch.ones(7))


def test_cpu_bound_linear_checks_each_call(cpu_ops):
    w8 = torch.randint(-127, 128, (20, 12), dtype=torch.int8)
    packed, colsum = reference.pack_int8_weight(w8)
    linear = cpu_ops.bind_int8_linear(packed, colsum, torch.rand(20) * 0.01, 12, x_dtype=torch.float32)
    x = torch.randn(3, 12)
    torch.testing.assert_close(linear(x), reference.int8_linear(x, packed, colsum, linear._operands[2]))
    with pytest.raises(TypeError, match="x"):
        linear(x.bfloat16())
    with pytest.raises(ValueError, match="x"):
        linear(torch.randn(3, 13))
    with pytest.raises(ValueError, match="residual"):
        linear(x, torch.randn(2, 20))
    with pytest.raises(ValueError, match="act_start"):
        linear(x, None, 21)


def test_cpu_binding_keeps_its_operands_alive(cpu_ops):
    """The template holds raw pointers: the bound op must own the tensors behind them."""
    block_size, num_kv_heads, head_dim = 8, 2, 16
    tables, num_blocks = random_block_tables([30], block_size)
    k_cache, v_cache = filled_caches([30], tables, num_blocks, block_size, num_kv_heads, head_dim, torch.float32)
    q, t, s, cu = _step([30], [2], tables, 2, head_dim)
    expected = reference.paged_attention(q, k_cache, v_cache, t, s, cu, 0.5, 0)
    attend = cpu_ops.bind_paged_attention(k_cache.clone(), v_cache.clone(), 0.5, 0)
    del k_cache, v_cache
    gc.collect()
    torch.zeros(num_blocks, block_size, num_kv_heads, head_dim).fill_(float("nan"))  # reuse freed memory
    torch.testing.assert_close(attend(q, t, s, cu), expected, atol=1e-5, rtol=1e-5)
