"""int4_linear (C++: per-row signed int8 activations, optionally through a layer norm, then the GEMM
on group-wise 4-bit weights unpacked in registers, with the dequantising epilogue fused) against the
torch reference: odd shapes (partial panels, K not a multiple of the group, row tails and several row
blocks), every group size, strided inputs, every epilogue part, both dtypes; the integer sums exactly."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import assert_close
from kernels import reference
from linear_cases import (DTYPE_IDS, DTYPES, SHAPES, bf16_norm_inputs, check_against_int8_gemm,
                          epilogue_cases, integer_rows)

GROUPS = [32, 64, 128]


def _weights(k, n, group_size, scale=1.0, min_value=0.0):
    """Random nibbles with every group's scale and min set: (u [n, Kp], packed, params)."""
    groups = -(-k // group_size)
    u = torch.randint(0, 16, (n, groups * group_size), dtype=torch.uint8)
    u[:, k:] = 0
    scales = torch.full((n, groups), scale, dtype=torch.float16)
    mins = torch.full((n, groups), min_value, dtype=torch.float16)
    return (u, *reference.pack_int4_weight(u, scales, mins))


def test_pack_int4_weight_layout():
    u = torch.randint(0, 16, (21, 64), dtype=torch.uint8)
    scales, mins = torch.rand(21, 2).half(), torch.rand(21, 2).half()
    packed, params = reference.pack_int4_weight(u, scales, mins)
    assert packed.shape == (2, 8, 16, 4) and packed.dtype == torch.uint8
    assert params.shape == (2, 2, 2, 16) and params.dtype == torch.float16
    for n, k in [(0, 0), (5, 9), (20, 3), (17, 6), (3, 63)]:
        byte = int(packed[n // 16, k // 8, n % 16, k % 4])
        assert (byte >> 4 if k % 8 >= 4 else byte & 15) == u[n, k]
    assert params[1, 0, 0, 2] == scales[18, 0] and params[0, 1, 1, 7] == mins[7, 1]
    assert (packed[1, :, 5:] == 0).all() and (params[1, :, :, 5:] == 0).all()  # padding columns
    assert torch.equal(reference.unpack_int4(packed, params, 21),
                       u.float() * scales.float().repeat_interleave(32, 1) + mins.float().repeat_interleave(32, 1))


@pytest.mark.parametrize("group_size", GROUPS)
def test_quantize_int4_error(group_size):
    """Symmetric: each weight within half a step of its group's grid. Asymmetric: per group, no more
    squared error than the plain min/max grid (the least-squares refit is kept only where it helps)."""
    w = torch.randn(40, 300) * 0.05
    w[3, :group_size] = 0.0  # a group of zeros
    approx = {}
    for asymmetric in (True, False):
        u, scales, mins = reference.quantize_int4(w, group_size, asymmetric)
        assert u.shape == (40, -(-300 // group_size) * group_size) and int(u.max()) <= 15
        assert (u[:, 300:] == 0).all()
        approx[asymmetric] = reference.unpack_int4(*reference.pack_int4_weight(u, scales, mins), 40)[:, :300]
        assert approx[asymmetric][3, :group_size].abs().max() < 1e-6
        if not asymmetric:
            step = scales.float().repeat_interleave(group_size, 1)[:, :300]
            assert ((approx[False] - w).abs() <= step * 0.5 + 1e-6).all()
    kp = -(-300 // group_size) * group_size
    groups = torch.nn.functional.pad(w, (0, kp - 300)).view(40, -1, group_size)
    lo, hi = groups.amin(2, keepdim=True), groups.amax(2, keepdim=True)
    s, m = ((hi - lo) / 15).clamp_min(2 ** -24).half().float(), lo.half().float()
    plain = (torch.round((groups - m) / s).clamp(0, 15) * s + m).view(40, kp)[:, :300]

    def group_error(a):
        return torch.nn.functional.pad((a - w).square(), (0, kp - 300)).view(40, -1, group_size).sum(2)
    full = 300 // group_size  # the last, partial group is fitted with its zero padding
    assert (group_error(approx[True])[:, :full] <= group_error(plain)[:, :full] * (1 + 1e-6) + 1e-12).all()
    assert group_error(approx[True]).sum() < group_error(approx[False]).sum()


@pytest.mark.parametrize("asymmetric", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n,k,group_size", [(1, 1, 32), (5, 7, 64), (33, 130, 32), (50, 96, 64), (300, 768, 128)])
def test_quantize_pack_int4_equals_reference(n, k, group_size, dtype, asymmetric, cpu_ops):
    """The C++ load-time quantiser gives the reference's bits but for the rare group whose refit scale
    its other summation order rounds the other way (then the two fits are as good)."""
    w = torch.randn(n, k) * 0.05
    if n > 2:
        w[1] = 0.0  # groups of zeros
    w = w.to(dtype)
    (packed, params), (ref_packed, ref_params) = cpu_ops.quantize_pack_int4(w, group_size, asymmetric), \
        reference.quantize_pack_int4(w, group_size, asymmetric)
    assert packed.shape == ref_packed.shape and params.shape == ref_params.shape
    same = (params == ref_params).all(dim=2)  # [panels, groups, 16]: scale and min equal
    assert same.float().mean() > 0.99 if asymmetric else same.all()
    got, want = (reference.unpack_int4(p, q, n)[:, :k] for p, q in ((packed, params), (ref_packed, ref_params)))
    same_weights = same.transpose(1, 2).reshape(-1, same.shape[1])[:n].repeat_interleave(group_size, 1)[:, :k]
    assert torch.equal(got[same_weights], want[same_weights])  # equal params: equal nibbles
    error = [(a - w.float()).square().sum() for a in (got, want)]
    assert error[0] <= error[1] * 1.001


def test_quantize_pack_int4_rejects_bad_weights(cpu_ops):
    with pytest.raises(TypeError, match="weight"):
        cpu_ops.quantize_pack_int4(torch.zeros(4, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        cpu_ops.quantize_pack_int4(torch.zeros(64))
    with pytest.raises(ValueError, match="group_size"):
        cpu_ops.quantize_pack_int4(torch.zeros(4, 64), 16)


def test_quantize_int4_rejects_bad_group_size():
    with pytest.raises(ValueError, match="group_size"):
        reference.quantize_int4(torch.randn(4, 64), 48)


@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_int4_linear_sums_exact(rows, k, n, dtype, group_size, cpu_ops):
    # Integer activations whose rows reach +-127 quantise to themselves (scale 1); with unit scales
    # and mins of -8 (the weights u - 8) and an fp32 output, out holds the integer sums exactly.
    x = integer_rows(rows, k)
    u, packed, params = _weights(k, n, group_size, 1.0, -8.0)
    out = cpu_ops.int4_linear(x.to(dtype), packed, params, n, out_dtype=torch.float32)
    assert torch.equal(out, (x.long() @ (u[:, :k].long() - 8).t()).float())


@epilogue_cases()
def test_int4_linear(rows, k, n, dtype, norm, bias, residual, act_start, cpu_ops):
    group_size = GROUPS[(rows + k) % 3]
    packed, params = reference.quantize_pack_int4(torch.randn(n, k) / k ** 0.5, group_size, asymmetric=rows % 2 == 1)
    check_against_int8_gemm(
        cpu_ops, lambda x, **kw: cpu_ops.int4_linear(x, packed, params, n, **kw),
        lambda xq, x_scales, **kw: reference.int4_gemm(xq, x_scales, packed, params, n, **kw),
        rows, k, n, dtype, norm, bias, residual, act_start)


def test_int4_linear_fp32_logits_from_bf16(cpu_ops):
    packed, params = reference.quantize_pack_int4(torch.randn(300, 64), 32)
    x, gamma, beta = bf16_norm_inputs(5, 64)
    out = cpu_ops.int4_linear(x, packed, params, 300, gamma=gamma, beta=beta, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, reference.int4_linear(x, packed, params, 300, gamma=gamma, beta=beta, out_dtype=torch.float32))


def test_int4_linear_bound_matches_functional(cpu_ops):
    packed, params = reference.quantize_pack_int4(torch.randn(40, 96), 64)
    bias = torch.randn(40).bfloat16()
    linear = cpu_ops.bind_int4_linear(packed, params, 96, 40, bias)
    ref = reference.bind_int4_linear(packed, params, 96, 40, bias)
    for rows in (1, 7, 65):
        x = torch.randint(-127, 128, (rows, 96)).bfloat16()  # rows quantise without rounding ties
        x[:, 0] = 127
        res = torch.randn(rows, 40).bfloat16()
        assert torch.equal(linear(x, res, 3), cpu_ops.int4_linear(x, packed, params, 40, bias, res, 3))
        assert_close(linear(x, res, 3), ref(x, res, 3))


def test_int4_linear_rejects_bad_inputs(cpu_ops):
    packed, params = reference.quantize_pack_int4(torch.randn(20, 64), 32)
    x = torch.randn(4, 64).bfloat16()
    with pytest.raises(TypeError, match="x"):
        cpu_ops.int4_linear(x.half(), packed, params, 20)
    with pytest.raises(ValueError, match="x"):
        cpu_ops.int4_linear(x.t(), packed, params, 20)
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.int4_linear(x, packed[:, :4].contiguous(), params, 20)
    with pytest.raises(ValueError, match="params"):
        cpu_ops.int4_linear(x, packed, params.float(), 20)
    with pytest.raises(ValueError, match="params"):
        cpu_ops.int4_linear(x, packed, params[:, :, :, :8].contiguous(), 20)
    with pytest.raises(ValueError, match="params"):
        cpu_ops.int4_linear(x, packed, torch.zeros(2, 3, 2, 16, dtype=torch.float16), 20)  # 64 / 3 inputs a group
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.int4_linear(torch.randn(4, 100).bfloat16(), packed, params, 20)  # K beyond the packed 64
    with pytest.raises(ValueError, match="bias"):
        cpu_ops.int4_linear(x, packed, params, 20, bias=torch.randn(20))  # fp32 bias, bf16 output
    with pytest.raises(ValueError, match="residual"):
        cpu_ops.int4_linear(x, packed, params, 20, residual=torch.randn(4, 19).bfloat16())
    with pytest.raises(ValueError, match="gamma"):
        cpu_ops.int4_linear(x, packed, params, 20, gamma=torch.randn(63).bfloat16())
    with pytest.raises(ValueError, match="act_start"):
        cpu_ops.int4_linear(x, packed, params, 20, act_start=21)
    with pytest.raises(TypeError, match="out_dtype"):
        cpu_ops.int4_linear(x, packed, params, 20, out_dtype=torch.float16)
