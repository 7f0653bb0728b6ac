"""int8_linear (C++: per-row activation quantisation, optionally through a layer norm, then the VNNI
GEMM with its dequantising epilogue fused) against the torch reference: odd shapes (partial 16-column
panels, K not a multiple of 4, row tails and several row blocks), strided inputs, every epilogue
part, both dtypes; the int32 sums exactly."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import assert_close, strided
from kernels import reference
from linear_cases import (DTYPE_IDS, DTYPES, SHAPES, bf16_norm_inputs, check_against_int8_gemm,
                          epilogue_cases, integer_rows)


def _weights(k, n):
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    return (w, *reference.pack_int8_weight(w))


def test_pack_int8_weight_layout():
    w = torch.randint(-127, 128, (21, 10), dtype=torch.int8)
    packed, colsum = reference.pack_int8_weight(w)
    assert packed.shape == (2, 3, 16, 4) and packed.dtype == torch.int8
    for n, k in [(0, 0), (5, 9), (20, 3), (17, 6)]:
        assert packed[n // 16, k // 4, n % 16, k % 4] == w[n, k]
    assert (packed[1, :, 5:] == 0).all() and (packed[:, 2, :, 2:] == 0).all()  # padding
    assert torch.equal(colsum[:21], w.sum(1, dtype=torch.int32)) and (colsum[21:] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n,k", [(1, 1), (5, 7), (33, 130), (50, 96), (2304, 768)])
def test_quantize_pack_int8_equals_reference(n, k, dtype, cpu_ops):
    """The load-time quantise-and-pack gives the reference's bits: scales, packed values, colsum.
    Rows include all zeros and values on rounding ties (scale exactly 1: amax 127)."""
    w = torch.randn(n, k) * 0.05
    w[0, 0] = 127.0 / 40.0 if k > 1 else w[0, 0]
    if n > 2 and k > 3:
        w[1] = 0.0
        w[2, :4] = torch.tensor([127.0, 0.5, -2.5, 3.5])  # scale 1: ties round to even
    w = w.to(dtype)
    for got, want, name in zip(cpu_ops.quantize_pack_int8(w), reference.quantize_pack_int8(w),
                               ("packed", "colsum", "scales")):
        assert got.dtype == want.dtype and torch.equal(got, want), name


def test_quantize_pack_int8_rejects_bad_weights(cpu_ops):
    with pytest.raises(TypeError, match="weight"):
        cpu_ops.quantize_pack_int8(torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        cpu_ops.quantize_pack_int8(torch.zeros(4))
    with pytest.raises(ValueError, match="weight"):
        cpu_ops.quantize_pack_int8(torch.zeros(0, 4))
    packed, colsum, scales = cpu_ops.quantize_pack_int8(torch.randn(20, 12).t())  # strided: copied
    assert packed.shape == (1, 5, 16, 4) and scales.shape == (12,)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_int8_linear_sums_exact(rows, k, n, dtype, cpu_ops):
    # Integer activations whose rows reach +-127 quantise to themselves (scale 1); with unit weight
    # scales and an fp32 output, out holds the int32 sums (all below 2^24, exact in fp32).
    x = integer_rows(rows, k)
    w, packed, colsum = _weights(k, n)
    out = cpu_ops.int8_linear(x.to(dtype), packed, colsum, torch.ones(n), out_dtype=torch.float32)
    assert torch.equal(out, (x.long() @ w.long().t()).float())


# Every row tail of the AVX2 tiles (1..17 rows, and 97: a 64-row block plus 33), K whose prepared
# rows end inside a group of 4 words (11, 37, 130: 3, 10, 33 words), N ending inside a half panel.
@pytest.mark.parametrize("k,n", [(11, 45), (37, 21), (130, 45)])
@pytest.mark.parametrize("rows", [*range(1, 18), 97])
def test_int8_linear_row_tails_exact(rows, k, n, cpu_ops):
    """The int32 sums and the dequantised fp32 and bf16 outputs match the reference bit for bit."""
    w, packed, colsum = _weights(k, n)
    x = torch.randint(-127, 128, (rows, k)).float()
    x[:, 0] = 127  # scale 1: the rows quantise to themselves
    sums = cpu_ops.int8_linear(x, packed, colsum, torch.ones(n), out_dtype=torch.float32)
    assert torch.equal(sums, (x.long() @ w.long().t()).float())
    x = torch.randn(rows, k) * 3.0
    w_scales = torch.rand(n) / (k * 16)
    xq, x_scales = cpu_ops.quantize_rows(x)
    for dtype in DTYPES:
        out = cpu_ops.int8_linear(x, packed, colsum, w_scales, out_dtype=dtype)
        expected = reference.int8_gemm(xq, x_scales, packed, colsum, w_scales, None, None, None, dtype)
        assert torch.equal(out, expected), dtype


@epilogue_cases()
def test_int8_linear(rows, k, n, dtype, norm, bias, residual, act_start, cpu_ops):
    w, packed, colsum = _weights(k, n)
    w_scales = torch.rand(n) / (k * 16)
    check_against_int8_gemm(
        cpu_ops, lambda x, **kw: cpu_ops.int8_linear(x, packed, colsum, w_scales, **kw),
        lambda xq, x_scales, **kw: reference.int8_gemm(xq, x_scales, packed, colsum, w_scales, **kw),
        rows, k, n, dtype, norm, bias, residual, act_start)


def test_int8_linear_fp32_logits_from_bf16(cpu_ops):
    # The lm_head case: bf16 activations through ln_f, fp32 output.
    w, packed, colsum = _weights(64, 300)
    x, gamma, beta = bf16_norm_inputs(5, 64)
    w_scales = torch.rand(300) * 0.01
    out = cpu_ops.int8_linear(x, packed, colsum, w_scales, gamma=gamma, beta=beta, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, reference.int8_linear(x, packed, colsum, w_scales, gamma=gamma, beta=beta,
                                            out_dtype=torch.float32))


def test_int8_linear_rejects_bad_inputs(cpu_ops):
    w, packed, colsum = _weights(32, 20)
    x, ws = torch.randn(4, 32).bfloat16(), torch.rand(20)
    with pytest.raises(TypeError, match="x"):
        cpu_ops.int8_linear(x.half(), packed, colsum, ws)
    with pytest.raises(ValueError, match="x"):
        cpu_ops.int8_linear(x.t(), packed, colsum, ws)
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.int8_linear(x, packed[:1], colsum, ws)
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.int8_linear(x, reference.pack_int8_weight(w[:, :28])[0], colsum, ws)
    with pytest.raises(ValueError, match="w_scales"):
        cpu_ops.int8_linear(x, packed, colsum, torch.rand(20).double())
    with pytest.raises(ValueError, match="bias"):
        cpu_ops.int8_linear(x, packed, colsum, ws, bias=torch.randn(20))  # fp32 bias, bf16 output
    with pytest.raises(ValueError, match="residual"):
        cpu_ops.int8_linear(x, packed, colsum, ws, residual=torch.randn(4, 19).bfloat16())
    with pytest.raises(ValueError, match="gamma"):
        cpu_ops.int8_linear(x, packed, colsum, ws, gamma=torch.randn(31).bfloat16())
    with pytest.raises(ValueError, match="beta"):
        cpu_ops.int8_linear(x, packed, colsum, ws, beta=torch.randn(32).bfloat16())
    with pytest.raises(ValueError, match="act_start"):
        cpu_ops.int8_linear(x, packed, colsum, ws, act_start=-1)
    with pytest.raises(TypeError, match="out_dtype"):
        cpu_ops.int8_linear(x, packed, colsum, ws, out_dtype=torch.float16)


@pytest.mark.parametrize("act_start", [None, 0, 21])
def test_int8_linear_bf16_store_rounds_like_torch(act_start, cpu_ops):
    # The epilogue's bf16 store (8 or 16 lanes at a time, element by element at a panel's edge)
    # rounds to nearest even as torch does: the bf16 output is the fp32 output rounded, bit for bit.
    w, packed, colsum = _weights(96, 50)
    x = strided(9, 96, torch.bfloat16, scale=3.0)
    w_scales = torch.rand(50) / 96
    fp32 = cpu_ops.int8_linear(x, packed, colsum, w_scales, act_start=act_start, out_dtype=torch.float32)
    bf16 = cpu_ops.int8_linear(x, packed, colsum, w_scales, act_start=act_start, out_dtype=torch.bfloat16)
    assert torch.equal(bf16, fp32.to(torch.bfloat16))
