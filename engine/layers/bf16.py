"""bf16 linears on the CPU: weights packed once at load for kernels.cpu.bf16_linear (a pair of inputs
per 32-bit word, 16 output columns per panel), so one call per layer runs the layer norm that feeds
the linear, the vdpbf16ps GEMM and its epilogue (bias, tanh gelu, residual), and a decode step
streams each weight once instead of going through oneDNN's small-batch bf16 path. The lm_head writes
fp32 logits: exact fp32 sums of the bf16 operands, no bf16 rounding of the output. With
attention_backend "torch" the same call runs kernels.reference.bf16_linear."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .. import kernel_package
from ..kernel_package import reference as reference_ops
from .quant import PackedLinearBase, packed_bias, replace_linears

try:
    cpu_ops = kernel_package.load("cpu")
except ImportError:  # the C++ extension is not built: pack_linears leaves the model alone
    cpu_ops = None


class Bf16Linear(PackedLinearBase):
    """y = residual + act(linear(norm(x))) with a packed bf16 weight (same call as Int8Linear)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype | None = None,
                 ops=None):
        """out_dtype: the output dtype (None: the input's); fp32 for logits. ops: the module whose
        bf16_linear runs it (kernels.reference for the "torch" backend; default: the C++ one)."""
        super().__init__()
        self.ops = ops or cpu_ops
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed_weight", reference_ops.pack_bf16_weight(weight.detach().to(torch.bfloat16)))
        self.out_dtype = out_dtype
        self.bias = packed_bias(bias, out_dtype)

    def _bind(self, x_dtype, bias, gamma, beta, eps, out_dtype):
        return self.ops.bind_bf16_linear(self.packed_weight, self.in_features, self.out_features, bias, gamma,
                                         beta, eps, x_dtype, out_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 packed"


def pack_linears(model: nn.Module, ops=None) -> nn.Module:
    """Replace every bf16 nn.Linear of a CPU model by a Bf16Linear calling ops.bf16_linear (a block
    with a `merge_projections` method merges its own first; a tied lm_head gets its own packed copy;
    the lm_head writes fp32). Without ops, no-op when the C++ extension is not built."""
    if (ops or cpu_ops) is None:
        return model
    return replace_linears(model, partial(Bf16Linear, ops=ops),
                           accept=lambda linear: linear.weight.dtype == torch.bfloat16
                           and linear.weight.device.type in ("cpu", "meta"))  # meta: see Int8Linear
