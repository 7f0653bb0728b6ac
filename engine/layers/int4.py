"""4-bit weights for dtype="int4": every nn.Linear of the blocks becomes an Int4Linear holding group-wise
asymmetric 4-bit weights (one fp16 scale and min per GROUP_SIZE inputs of an output channel:
kernels.reference.quantize_int4), packed once at load for kernels.cpu.int4_linear; the lm_head stays
an Int8Linear (per-channel int8, fp32 logits) and the embedding bf16, as in dtype="int8".

A decode step streams every weight once, so at one request its time is the bytes of the weights:
int4 with groups of 64 reads 0.5 + 4 / 64 bytes a weight against int8's 1 (README, Performance). The
activations stay per-token int8 (kernels.cpu.quantize_rows' arithmetic), so the GEMM is the int8
one's with nibbles unpacked in registers, and a token's result does not depend on the other tokens
of the step. With attention_backend "torch" the same call runs kernels.reference.int4_linear.
Agreement with fp32: README, Quality."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .. import kernel_package
from ..kernel_package import reference as reference_ops
from .quant import PackedLinearBase, packed_bias, quantize_linears, replace_linears

try:
    cpu_ops = kernel_package.load("cpu")
except ImportError:  # the C++ extension is not built: the reference ops (slow, same results)
    cpu_ops = reference_ops

# Inputs per (scale, min) pair. Teacher-forced agreement with fp32 on the bundled model (README,
# Quality): 32 and 64 keep it within a point of int8, 128 loses more; 64 costs 6% more bytes
# than 128 and 6% fewer than 32.
GROUP_SIZE = 64


class Int4Linear(PackedLinearBase):
    """y = residual + act(linear(norm(x))) with group-wise 4-bit weights (same call as Int8Linear)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype | None = None,
                 ops=None, group_size: int = GROUP_SIZE, asymmetric: bool = True):
        """out_dtype: the output dtype (None: the input's). ops: the module whose int4_linear runs it
        (kernels.reference for the "torch" backend; default: the C++ one). group_size, asymmetric:
        see kernels.reference.quantize_int4."""
        super().__init__()
        if weight.device.type not in ("cpu", "meta"):  # meta: see Int8Linear
            raise ValueError(f"dtype 'int4' runs on the CPU; the weight is on {weight.device}")
        self.ops = ops or cpu_ops
        self.out_features, self.in_features = weight.shape
        self.group_size = group_size
        if weight.dtype not in (torch.float32, torch.bfloat16):
            weight = weight.float()
        packed, params = self.ops.quantize_pack_int4(weight, group_size, asymmetric)
        self.register_buffer("packed_weight", packed)  # [out / 16, Kp / 8, 16, 4] uint8: two nibbles a byte
        self.register_buffer("params", params)         # [out / 16, Kp / G, 2, 16] fp16 scales, mins
        self.out_dtype = out_dtype
        self.bias = packed_bias(bias, out_dtype)

    def _bind(self, x_dtype, bias, gamma, beta, eps, out_dtype):
        return self.ops.bind_int4_linear(self.packed_weight, self.params, self.in_features, self.out_features,
                                         bias, gamma, beta, eps, x_dtype, out_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 g{self.group_size}"


def quantize_linears_int4(model: nn.Module, ops=None, group_size: int = GROUP_SIZE,
                          asymmetric: bool = True) -> nn.Module:
    """Replace every nn.Linear but the lm_head by an Int4Linear calling ops.int4_linear, the lm_head
    (when still an nn.Linear) by an Int8Linear (see replace_linears)."""
    head = getattr(model, "lm_head", None)
    replace_linears(model, partial(Int4Linear, ops=ops, group_size=group_size, asymmetric=asymmetric),
                    accept=lambda linear: linear is not head)
    return quantize_linears(model, ops)
