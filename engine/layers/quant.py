"""int8 weights and activations for dtype="int8": every nn.Linear of a loaded model is swapped for an
Int8Linear holding per-output-channel symmetric int8 weights and fp32 scales (a tied lm_head gets
its own int8 copy; the embedding stays bf16). Norms and attention stay bfloat16 (the KV cache
follows kv_cache_dtype).

On the CPU one call of kernels.cpu.int8_linear does it all, in one parallel region:
    1. the bf16 activations (optionally through the layer norm that feeds the linear) -> per-row
       symmetric int8, stored as uint8 with zero point 128, + row scales (kernels.cpu.quantize_rows'
       arithmetic);
    2. the VNNI u8 x s8 GEMM on weights packed once at load (kernels.reference.pack_int8_weight)
       with the epilogue fused: x row scale x weight scale, + bias, gelu on the columns from
       act_start, + residual, one bf16 (or fp32) write: faster than the bf16 GEMM, and at decode
       sizes than oneDNN's int8 GEMM with a separate epilogue (README, Performance).
Per-row (per-token) activation scales keep a token's result independent of the other tokens of
the step, so batched greedy decoding gives the tokens of one-at-a-time decoding (the int32
accumulation is exact whatever the batch). With attention_backend "torch" the same call runs
kernels.reference.int8_linear. On other devices the int8 weight is dequantized to the activation
dtype per call. Agreement with fp32: README, Performance."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernel_package
from ..kernel_package import reference as reference_ops

try:
    cpu_ops = kernel_package.load("cpu")
except ImportError:  # the C++ extension is not built: the reference ops (slow, same results)
    cpu_ops = reference_ops


class PackedLinearBase(nn.Module):
    """What Int8Linear, Bf16Linear and Int4Linear share: the backend's linear op bound once per (input dtype,
    norm) to this layer's packed weight, bias and norm parameters (`ops.bind_*_linear`: the C++ one
    checks them once and keeps its argument template), so a step's call passes only its rows. The
    bindings hold the tensors they point to; moving the module (`.to()`, `_apply`) drops them."""

    def __init__(self):
        super().__init__()
        self._bound: dict = {}  # (x dtype, norm) -> (op, out_dtype)

    def _bind(self, x_dtype: torch.dtype, bias, gamma, beta, eps: float, out_dtype: torch.dtype):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, norm: nn.LayerNorm | None = None, act_start: int | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: [..., in] -> [..., out]. norm: the layer norm applied to x first; act_start: gelu (tanh)
        on output columns >= act_start (None: none); residual: [..., out] added last."""
        return self._packed_forward(x, norm, act_start, residual)

    def _apply(self, fn, *args, **kwargs):
        self._bound = {}
        return super()._apply(fn, *args, **kwargs)

    def _packed_forward(self, x: torch.Tensor, norm: nn.LayerNorm | None, act_start: int | None,
                        residual: torch.Tensor | None) -> torch.Tensor:
        """x: [..., in] -> [..., out] through the bound op (see Int8Linear.forward)."""
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        op, out_dtype = self.bound(x.dtype, norm)
        if residual is not None:
            residual = residual.reshape(-1, self.out_features)
            if residual.dtype != out_dtype:
                residual = residual.to(out_dtype)
        return op(x, residual, act_start).view(*shape[:-1], self.out_features)

    def bound(self, x_dtype: torch.dtype, norm: nn.LayerNorm | None = None):
        """(op, out_dtype): the backend's linear bound for inputs of x_dtype (through norm), bound on
        first use and kept; op(x, residual, act_start) -> [rows, out_features]."""
        bound = self._bound.get((x_dtype, norm))
        if bound is None:
            bound = self._bound[(x_dtype, norm)] = self._bind_for(x_dtype, norm)
        return bound

    def _bind_for(self, x_dtype: torch.dtype, norm: nn.LayerNorm | None):
        out_dtype = self.out_dtype or x_dtype
        bias = self._parameters.get("bias")
        if bias is not None:
            bias = bias.to(out_dtype)
        gamma, beta, eps = (None, None, 1e-5) if norm is None else (norm.weight, norm.bias, norm.eps)
        return self._bind(x_dtype, bias, gamma, beta, eps, out_dtype), out_dtype


def packed_bias(bias: torch.Tensor | None, out_dtype: torch.dtype | None) -> nn.Parameter | None:
    """A packed bf16 / int4 layer's bias: a frozen copy in the output dtype (bf16 when the output
    follows the input)."""
    if bias is None:
        return None
    return nn.Parameter(bias.detach().to(out_dtype or torch.bfloat16).clone(), requires_grad=False)


class Int8Linear(PackedLinearBase):
    """y = residual + act(linear(norm(x))) with int8 weights; see the module docstring."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype | None = None,
                 packed: bool | None = None, ops=None):
        """out_dtype: the output dtype (None: the input's); fp32 for logits, which a bf16 output would
        round and so flip near-tied argmaxes. packed: keep the weight in int8_linear's packed
        layout (the CPU path; default: when the weight is on the CPU), else as [out, in] int8 that
        is dequantized per call. ops: the module whose int8_linear runs the packed path
        (kernels.reference for the "torch" backend; default: the C++ one)."""
        super().__init__()
        self.ops = ops or cpu_ops
        self.out_features, self.in_features = weight.shape
        # meta: the structure of a model whose packed tensors come from the prepared-weights cache.
        self.packed = weight.device.type in ("cpu", "meta") if packed is None else packed
        if self.packed:  # only the packed copy is kept: [out / 16, in / 4, 16, 4] + column sums
            if weight.dtype not in (torch.float32, torch.bfloat16):
                weight = weight.float()
            packed_weight, colsum, scale = self.ops.quantize_pack_int8(weight)
            self.register_buffer("packed_weight", packed_weight)
            self.register_buffer("colsum", colsum)
        else:
            q, scale = reference_ops.quantize_per_channel(weight)
            self.register_buffer("qweight", q)      # [out, in] int8
        self.register_buffer("scale", scale)        # [out] fp32
        self.out_dtype = out_dtype
        if bias is not None:
            bias = bias.detach().to(out_dtype or bias.dtype).clone()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, out_dtype: torch.dtype | None = None,
                    packed: bool | None = None, ops=None) -> Int8Linear:
        return cls(linear.weight, linear.bias, out_dtype, packed, ops)

    def forward(self, x: torch.Tensor, norm: nn.LayerNorm | None = None, act_start: int | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: [..., in] -> [..., out]. norm: the layer norm applied to x first; act_start: gelu (tanh)
        on output columns >= act_start (None: none); residual: [..., out] added last."""
        if self.packed:
            return self._packed_forward(x, norm, act_start, residual)
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        res = None if residual is None else residual.reshape(-1, self.out_features)
        return self._forward_dequantized(x, norm, act_start, res).view(*shape[:-1], self.out_features)

    def _bind(self, x_dtype, bias, gamma, beta, eps, out_dtype):
        return self.ops.bind_int8_linear(self.packed_weight, self.colsum, self.scale, self.in_features, bias,
                                         gamma, beta, eps, x_dtype, out_dtype)

    def _forward_dequantized(self, x, norm, act_start, residual):
        h = x if norm is None else norm(x)
        weight = self.qweight.to(h.dtype) * self.scale.to(h.dtype)[:, None]
        y = F.linear(h, weight, None if self.bias is None else self.bias.to(h.dtype)).to(self.out_dtype or h.dtype)
        if act_start is not None:
            y[:, act_start:] = F.gelu(y[:, act_start:], approximate="tanh")
        return y if residual is None else y.add_(residual)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def replace_linears(model: nn.Module, linear_cls, accept=lambda linear: True) -> nn.Module:
    """Replace every nn.Linear that `accept` takes by linear_cls(weight, bias, out_dtype) (a class
    or a partial of one); a block with a `merge_projections` method merges its own first. A linear
    tied to an embedding gets its own copy; the lm_head writes fp32 logits."""
    for module in list(model.modules()):
        if hasattr(module, "merge_projections"):
            module.merge_projections(linear_cls)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and accept(child):
                out_dtype = torch.float32 if name == "lm_head" else None
                setattr(parent, name, linear_cls(child.weight, child.bias, out_dtype))
    return model


def quantize_linears(model: nn.Module, ops=None) -> nn.Module:
    """Replace every nn.Linear by an Int8Linear calling ops.int8_linear (see replace_linears)."""
    return replace_linears(model, partial(Int8Linear, ops=ops))
