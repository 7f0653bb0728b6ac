"""bf16_linear (C++: layer norm, then the vdpbf16ps GEMM on packed bf16 weights with its epilogue
fused) against the torch reference: odd shapes (partial 16-column panels, odd K, row tails and several
row blocks), strided inputs, every epilogue part, both dtypes; fp32 outputs are the exact fp32 sums of
the bf16 operands."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import assert_close, strided
from kernels import reference
from linear_cases import SHAPES, epilogue_args, epilogue_cases


def test_pack_bf16_weight_layout():
    w = torch.randn(21, 9).bfloat16()
    packed = reference.pack_bf16_weight(w)
    assert packed.shape == (2, 5, 16, 2) and packed.dtype == torch.bfloat16
    for n, k in [(0, 0), (5, 8), (20, 3), (17, 6)]:
        assert packed[n // 16, k // 2, n % 16, k % 2] == w[n, k]
    assert (packed[1, :, 5:] == 0).all() and (packed[:, 4, :, 1] == 0).all()  # padding


@epilogue_cases(bias_residual=[(False, False), (True, True)])
def test_bf16_linear(rows, k, n, dtype, norm, bias, residual, act_start, cpu_ops):
    w = (torch.randn(n, k) / k ** 0.5).bfloat16()
    packed = reference.pack_bf16_weight(w)
    x = strided(rows, k, dtype, scale=2.0)
    norm_args, kwargs = epilogue_args(rows, k, n, dtype, norm, bias, residual, act_start)
    kwargs.update(norm_args)
    out = cpu_ops.bf16_linear(x, packed, n, **kwargs)
    assert out.dtype == dtype and out.shape == (rows, n) and out.is_contiguous()
    expected = reference.bf16_linear(x, packed, n, **kwargs)
    if norm == "none":
        assert_close(out, expected)
    else:  # the normed row is rounded to bf16 for the GEMM: a value near a rounding tie may go either way
        assert_close(out.to(torch.bfloat16), expected.to(torch.bfloat16))


@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_bf16_linear_fp32_logits_exact(rows, k, n, cpu_ops):
    # Small-integer bf16 operands: every product and partial sum is exact in fp32, so the fp32 output
    # must equal the integer matmul bit for bit, whatever the summation order.
    w = torch.randint(-8, 9, (n, k)).bfloat16()
    x = torch.randint(-8, 9, (rows, k)).bfloat16()
    out = cpu_ops.bf16_linear(x, reference.pack_bf16_weight(w), n, out_dtype=torch.float32)
    assert torch.equal(out, (x.long() @ w.long().t()).float())


def test_bf16_linear_rejects_bad_inputs(cpu_ops):
    w = torch.randn(20, 32).bfloat16()
    packed, x = reference.pack_bf16_weight(w), torch.randn(4, 32).bfloat16()
    with pytest.raises(TypeError, match="x"):
        cpu_ops.bf16_linear(x.half(), packed, 20)
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.bf16_linear(x, packed, 40)
    with pytest.raises(ValueError, match="packed"):
        cpu_ops.bf16_linear(x, packed.float(), 20)
    with pytest.raises(ValueError, match="bias"):
        cpu_ops.bf16_linear(x, packed, 20, bias=torch.randn(20))
    with pytest.raises(ValueError, match="residual"):
        cpu_ops.bf16_linear(x, packed, 20, residual=torch.randn(4, 19).bfloat16())
    with pytest.raises(ValueError, match="act_start"):
        cpu_ops.bf16_linear(x, packed, 20, act_start=21)
