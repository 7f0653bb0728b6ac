"""quantize_rows (C++, the input half of the CPU int8 GEMM) against the torch reference, on odd
shapes, strided rows and both dtypes. Quantized values may differ by one step where a value sits
on a rounding tie (the C++ code may fuse the multiply into the rounding add)."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import assert_close, strided
from kernels import reference

SHAPES = [(1, 7), (5, 96), (33, 1024), (300, 130)]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("norm", ["none", "layernorm", "layernorm_no_beta"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows,dim", SHAPES)
def test_quantize_rows(rows, dim, dtype, norm, cpu_ops):
    x = strided(rows, dim, dtype, scale=3.0)
    x[0] = 0  # a row of zeros: scale 0, every value at the zero point
    args = ()
    if norm != "none":
        args = (torch.randn(dim).to(dtype), None if norm.endswith("no_beta") else torch.randn(dim).to(dtype))
    xq, scales = cpu_ops.quantize_rows(x, *args)
    ref_q, ref_scales = reference.quantize_rows(x, *args)
    assert xq.dtype == torch.uint8 and xq.shape == (rows, dim) and xq.is_contiguous()
    diff = (xq.int() - ref_q.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, f"{int((diff > 0).sum())} values differ"
    assert_close(scales, ref_scales, "scales")
    if norm == "none":
        assert scales[0] == 0 and (xq[0] == 128).all()
    assert ((xq.int() - 128).abs() <= 127).all()
    # Dequantizing gives back the (normalised) input within half a step per row.
    v = x.float() if norm == "none" else torch.nn.functional.layer_norm(
        x.float(), (dim,), args[0].float(), None if args[1] is None else args[1].float())
    err = ((xq.float() - 128) * scales[:, None] - v).abs()
    assert (err <= scales[:, None] * 0.5 + 1e-6 + v.abs() * 1e-6).all()


def test_quantize_rejects_bad_inputs(cpu_ops):
    x = torch.randn(4, 16)
    with pytest.raises(TypeError, match="x"):
        cpu_ops.quantize_rows(x.double())
    with pytest.raises(ValueError, match="x"):
        cpu_ops.quantize_rows(x.t())
    with pytest.raises(ValueError, match="gamma"):
        cpu_ops.quantize_rows(x, torch.randn(15))
    with pytest.raises(ValueError, match="beta"):
        cpu_ops.quantize_rows(x, None, torch.randn(16))
