"""Cases the packed CPU linear tests share (bf16_linear, int8_linear, int4_linear): odd shapes,
both dtypes, the epilogue grid and its arguments, integer activations that quantise exactly."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import assert_close, strided

# (rows, in_features, out_features): partial 16-column panels, K not a multiple of 4, row tails,
# several row blocks.
SHAPES = [(1, 7, 5), (3, 64, 16), (9, 37, 33), (33, 130, 50), (300, 96, 200), (8, 768, 2304)]
DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = ["fp32", "bf16"]
BIAS_RESIDUAL = [(False, False), (True, False), (False, True), (True, True)]


def epilogue_cases(bias_residual=BIAS_RESIDUAL):
    """Parametrizes a test over shape x dtype x norm x (bias, residual) x act_start."""
    marks = [pytest.mark.parametrize("act_start", [None, 0, "mid"]),
             pytest.mark.parametrize("bias,residual", bias_residual),
             pytest.mark.parametrize("norm", ["none", "layernorm"]),
             pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS),
             pytest.mark.parametrize("rows,k,n", SHAPES)]

    def apply(test):
        for mark in reversed(marks):  # as decorators stack: the last one applies first
            test = mark(test)
        return test
    return apply


def epilogue_args(rows, k, n, dtype, norm, bias, residual, act_start):
    """(norm_args, kwargs) of one epilogue case: the layer norm's gamma/beta/eps (empty without
    one) and the bias, residual and act_start ("mid": a column inside the output)."""
    norm_args = {}
    if norm == "layernorm":
        norm_args = dict(gamma=torch.randn(k).to(dtype), beta=torch.randn(k).to(dtype), eps=1e-5)
    kwargs = dict(bias=torch.randn(n).to(dtype) if bias else None,
                  residual=strided(rows, n, dtype) if residual else None,
                  act_start=max(n // 2 - 3, 1) if act_start == "mid" else act_start)
    return norm_args, kwargs


def check_against_int8_gemm(cpu_ops, linear, gemm, rows, k, n, dtype, norm, bias, residual, act_start):
    """linear(x, **epilogue) of an int8-activation linear on a strided x (row 0 all zeros: scale 0)
    against the reference gemm(xq, x_scales, out_dtype=, **epilogue) from the C++ int8 activations
    of x: the C++ quantisation (held to the reference by test_quantize_rows) may round a tie the
    other way; from the same activations the rest must match."""
    x = strided(rows, k, dtype, scale=3.0)
    x[0] = 0
    norm_args, kwargs = epilogue_args(rows, k, n, dtype, norm, bias, residual, act_start)
    out = linear(x, **kwargs, **norm_args)
    assert out.dtype == dtype and out.shape == (rows, n) and out.is_contiguous()
    xq, x_scales = cpu_ops.quantize_rows(x, norm_args.get("gamma"), norm_args.get("beta"))
    assert_close(out, gemm(xq, x_scales, out_dtype=dtype, **kwargs))


def integer_rows(rows, k):
    """fp32 integer activations whose every row reaches 127: they quantise to themselves (scale 1)."""
    x = torch.randint(-127, 128, (rows, k)).float()
    x[:, 0] = 127
    return x


def bf16_norm_inputs(rows, k):
    """(x, gamma, beta) in bf16: the lm_head case, activations through ln_f."""
    return torch.randn(rows, k).bfloat16(), torch.randn(k).bfloat16(), torch.randn(k).bfloat16()
