"""int8_gemm (C++ VNNI GEMM with the dequantising epilogue fused) against the torch reference:
odd shapes (partial 16-column panels, K not a multiple of 4, row tails and several row blocks),
strided inputs, every epilogue part, both output dtypes; the int32 sums exactly."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import assert_close
from kernels import reference

# (rows, in_features, out_features)
SHAPES = [(1, 7, 5), (3, 64, 16), (9, 37, 33), (33, 130, 50), (300, 96, 200), (8, 768, 2304)]
DTYPES = [torch.float32, torch.bfloat16]


def _operands(rows, k, n, x_stride_pad=0):
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    xq = torch.randint(0, 256, (rows, k + x_stride_pad), dtype=torch.uint8)[:, :k]
    packed, colsum = reference.pack_int8_weight(w)
    return w, xq, packed, colsum


def test_pack_int8_weight_layout():
    w = torch.randint(-127, 128, (21, 10), dtype=torch.int8)
    packed, colsum = reference.pack_int8_weight(w)
    assert packed.shape == (2, 3, 16, 4) and packed.dtype == torch.int8
    for n, k in [(0, 0), (5, 9), (20, 3), (17, 6)]:
        assert packed[n // 16, k // 4, n % 16, k % 4] == w[n, k]
    assert (packed[1, :, 5:] == 0).all() and (packed[:, 2, :, 2:] == 0).all()  # padding
    assert torch.equal(colsum[:21], w.sum(1, dtype=torch.int32)) and (colsum[21:] == 0).all()


@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_int8_gemm_sums_exact(rows, k, n, cpu_ops):
    # Unit scales, fp32 output: out holds the int32 sums themselves (all below 2^24, exact in fp32).
    w, xq, packed, colsum = _operands(rows, k, n, x_stride_pad=3)
    out = cpu_ops.int8_gemm(xq, torch.ones(rows), packed, colsum, torch.ones(n), out_dtype=torch.float32)
    expected = ((xq.long() - 128) @ w.long().t()).float()
    assert torch.equal(out, expected)


@pytest.mark.parametrize("act_start", [None, 0, "mid"])
@pytest.mark.parametrize("bias,residual", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_int8_gemm(rows, k, n, dtype, bias, residual, act_start, cpu_ops):
    w, xq, packed, colsum = _operands(rows, k, n, x_stride_pad=5)
    x_scales = torch.rand(rows) / (k * 64)
    x_scales[0] = 0  # a row of zeros quantises to scale 0
    w_scales = torch.rand(n) * 2
    kwargs = dict(bias=torch.randn(n).to(dtype) if bias else None,
                  residual=torch.randn(rows, n + 3).to(dtype)[:, 1:n + 1] if residual else None,
                  act_start=max(n // 2 - 3, 1) if act_start == "mid" else act_start, out_dtype=dtype)
    out = cpu_ops.int8_gemm(xq, x_scales, packed, colsum, w_scales, **kwargs)
    assert out.is_contiguous()
    assert_close(out, reference.int8_gemm(xq, x_scales, packed, colsum, w_scales, **kwargs))


def test_int8_gemm_rejects_bad_inputs(cpu_ops):
    w, xq, packed, colsum = _operands(4, 32, 20)
    xs, ws = torch.rand(4), torch.rand(20)
    with pytest.raises(TypeError, match="xq"):
        cpu_ops.int8_gemm(xq.to(torch.int8), xs, packed, colsum, ws)
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.int8_gemm(xq, xs, packed[:1], colsum, ws)
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.int8_gemm(xq, xs, reference.pack_int8_weight(w[:, :28])[0], colsum, ws)
    with pytest.raises(ValueError, match="x_scales"):
        cpu_ops.int8_gemm(xq, torch.rand(3), packed, colsum, ws)
    with pytest.raises(ValueError, match="bias"):
        cpu_ops.int8_gemm(xq, xs, packed, colsum, ws, bias=torch.randn(20))  # fp32 bias, bf16 output
    with pytest.raises(ValueError, match="residual"):
        cpu_ops.int8_gemm(xq, xs, packed, colsum, ws, residual=torch.randn(4, 19).bfloat16())
    with pytest.raises(ValueError, match="act_start"):
        cpu_ops.int8_gemm(xq, xs, packed, colsum, ws, act_start=-1)
    with pytest.raises(TypeError, match="out_dtype"):
        cpu_ops.int8_gemm(xq, xs, packed, colsum, ws, out_dtype=torch.float16)
