"""Packed C++ CPU linears (kernels._cpu): the quantisers and packers that lay weights out at load, and
PackedLinear, which checks a layer's fixed operands once and runs `int8_linear` / `bf16_linear` /
`int4_linear` (layer norm on the input, GEMM, bias / gelu / residual epilogue) per call. Same
signatures as kernels.reference; kernels.cpu re-exports every public name."""
from __future__ import annotations

import torch

from . import _cpu, host_memory
from ._checks import check_device, int4_group_size

_CPU = torch.device("cpu")
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def _dtype_name(t: torch.Tensor, name: str) -> str:
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: the CPU kernels take float32 or bfloat16, got {t.dtype}")
    return _DTYPES[t.dtype]


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _check_rows_2d(t: torch.Tensor, name: str) -> None:
    check_device(_CPU, **{name: t})
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"{name}: expected a [rows, dim] tensor with a dense last dim, "
                         f"got shape {list(t.shape)} strides {t.stride()}")


def _vector(t: torch.Tensor | None, name: str, dim: int, dtype: torch.dtype) -> torch.Tensor | None:
    if t is None:
        return None
    check_device(_CPU, **{name: t})
    if t.shape != (dim,) or t.dtype != dtype:
        raise ValueError(f"{name}: expected a [{dim}] {dtype} tensor, got {list(t.shape)} {t.dtype}")
    return t.contiguous()


def quantize_rows(x: torch.Tensor, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                  eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """See kernels.reference.quantize_rows (x: fp32 or bf16; gamma, beta in x's dtype)."""
    dtype = _dtype_name(x, "x")
    _check_rows_2d(x, "x")
    num_rows, dim = x.shape
    if gamma is None and beta is not None:
        raise ValueError("beta: given without gamma")
    gamma, beta = _vector(gamma, "gamma", dim, x.dtype), _vector(beta, "beta", dim, x.dtype)
    out = torch.empty(num_rows, dim, dtype=torch.uint8)
    scales = torch.empty(num_rows, dtype=torch.float32)
    a = _cpu.QuantizeArgs()
    a.x, a.out, a.scales = x.data_ptr(), out.data_ptr(), scales.data_ptr()
    a.gamma = 0 if gamma is None else gamma.data_ptr()
    a.beta = 0 if beta is None else beta.data_ptr()
    a.num_rows, a.dim, a.x_stride, a.eps = num_rows, dim, max(x.stride(0), dim), float(eps)
    _cpu.quantize_rows(a, dtype)
    return out, scales


def quantize_pack_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See kernels.reference.quantize_pack_int8 (same bits): one pass over the weight, panels on
    every thread, no float temporaries."""
    check_device(_CPU, weight=weight)
    dtype = _dtype_name(weight, "weight")
    if weight.dim() != 2 or 0 in weight.shape:
        raise ValueError(f"weight: expected a non-empty [out_features, in_features] tensor, got {list(weight.shape)}")
    weight = weight.detach().contiguous()
    n, k = weight.shape
    packed, colsum, scales = packed_outputs("int8", n, k)
    a = _cpu.QuantPackArgs()
    a.weight, a.packed, a.colsum, a.scales = weight.data_ptr(), packed.data_ptr(), colsum.data_ptr(), scales.data_ptr()
    a.out_features, a.in_features = n, k
    _cpu.quantize_pack_int8(a, dtype)
    return packed, colsum, scales


def quantize_pack_int4(weight: torch.Tensor, group_size: int = 64,
                       asymmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """See kernels.reference.quantize_pack_int4 (the same arithmetic; a rare group may differ in the
    last bit of its refit scale): one pass over the weight, panels on every thread."""
    check_device(_CPU, weight=weight)
    dtype = _dtype_name(weight, "weight")
    if weight.dim() != 2 or 0 in weight.shape:
        raise ValueError(f"weight: expected a non-empty [out_features, in_features] tensor, got {list(weight.shape)}")
    if group_size <= 0 or group_size % 32:
        raise ValueError(f"group_size: must be a positive multiple of 32, got {group_size}")
    weight = weight.detach().contiguous()
    n, k = weight.shape
    packed, params = packed_outputs("int4", n, k, group_size)
    a = _cpu.QuantPackArgs()
    a.weight, a.packed, a.scales = weight.data_ptr(), packed.data_ptr(), params.data_ptr()
    a.out_features, a.in_features, a.group_size, a.asymmetric = n, k, group_size, bool(asymmetric)
    _cpu.quantize_pack_int4(a, dtype)
    return packed, params


# Packed weight layouts of the linear ops: (weight dtype, weight values per 32-bit word).
_PACKED = {"int8": (torch.int8, 4), "bf16": (torch.bfloat16, 2), "int4": (torch.uint8, 8)}


def packed_outputs(kind: str, n: int, k: int, group_size: int = 64,
                   device: torch.device | str = _CPU) -> tuple[torch.Tensor, ...]:
    """Uninitialised outputs of quantize_pack_int8 (kind "int8": packed, colsum, scales) or of
    quantize_pack_int4 ("int4": packed, params) for an [n, k] weight, the packed weight on huge
    pages; on the meta device their shapes and dtypes alone (the prepared-weights cache builds a
    model's structure from them before filling it from its file)."""
    shape = _packed_shape(kind, n, k, group_size)
    meta = torch.device(device).type == "meta"
    packed = torch.empty(shape, dtype=_PACKED[kind][0], device=device) if meta else host_memory.empty(shape, _PACKED[kind][0])
    if kind == "int8":
        return (packed, torch.empty(shape[0] * 16, dtype=torch.int32, device=device),
                torch.empty(n, dtype=torch.float32, device=device))
    return packed, torch.empty(shape[0], -(-k // group_size), 2, 16, dtype=torch.float16, device=device)


def _packed_shape(kind: str, n: int, k: int, group_size: int) -> tuple:
    if kind == "int4":  # [panels, Kp / 8, 16, 4] bytes, two nibbles each (csrc/gemm_int4.cpp)
        return -(-n // 16), -(-k // group_size) * group_size // 8, 16, 4
    per_word = _PACKED[kind][1]
    return -(-n // 16), -(-k // per_word), 16, per_word


class PackedLinear:
    """A packed linear layer's fixed operands (weight, its scales, bias, the layer norm on its input),
    checked once and held in the C++ argument template; a call passes the rows of one step:
    `linear(x, residual=None, act_start=None) -> [rows, out_features]` (see kernels.reference
    int8_linear / bf16_linear / int4_linear for the arithmetic; int4 passes its params as w_scales). Each rule is checked where its operand comes in:
    the fixed ones here, x / residual / act_start per call (TypeError / ValueError naming it)."""

    __slots__ = ("kind", "in_features", "out_features", "x_dtype", "out_dtype", "_args", "_names", "_operands",
                 "_run")

    def __init__(self, kind: str, packed: torch.Tensor, in_features: int, out_features: int,
                 colsum: torch.Tensor | None = None, w_scales: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                 beta: torch.Tensor | None = None, eps: float = 1e-5,
                 x_dtype: torch.dtype = torch.bfloat16, out_dtype: torch.dtype | None = None):
        out_dtype = out_dtype or x_dtype
        if x_dtype not in _DTYPES:
            raise TypeError(f"x: the CPU kernels take float32 or bfloat16, got {x_dtype}")
        if out_dtype not in _DTYPES:
            raise TypeError(f"out_dtype: the CPU kernels take float32 or bfloat16, got {out_dtype}")
        n, k = out_features, in_features
        check_device(_CPU, packed=packed)
        if kind == "int4" and w_scales is not None:
            check_device(_CPU, params=w_scales)
        group_size = int4_group_size(packed, w_scales, n) if kind == "int4" else 0
        dtype, shape = _PACKED[kind][0], _packed_shape(kind, n, k, group_size)
        if packed.shape != shape or packed.dtype != dtype or not packed.is_contiguous():
            raise ValueError(f"packed: expected a contiguous {dtype} {list(shape)} tensor (pack_{kind}_weight of a "
                             f"[{n}, {k}] weight), got {list(packed.shape)} {packed.dtype}")
        if gamma is None and beta is not None:
            raise ValueError("beta: given without gamma")
        bias, gamma, beta = _vector(bias, "bias", n, out_dtype), _vector(gamma, "gamma", k, x_dtype), \
            _vector(beta, "beta", k, x_dtype)
        a = _cpu.PackedLinearArgs()
        if kind == "int8":
            colsum = _vector(colsum, "colsum", shape[0] * 16, torch.int32)
            w_scales = _vector(w_scales, "w_scales", n, torch.float32)
            a.colsum, a.w_scales = colsum.data_ptr(), w_scales.data_ptr()
        elif kind == "int4":  # fp16 group scales and mins in the w_scales slot
            a.w_scales, a.group_size = w_scales.data_ptr(), group_size
        a.packed, a.gamma, a.beta, a.bias = packed.data_ptr(), _ptr(gamma), _ptr(beta), _ptr(bias)
        a.in_features, a.out_features, a.out_stride, a.eps = k, n, n, float(eps)
        self.kind, self.in_features, self.out_features = kind, k, n
        self._run = f"{kind}_linear"  # looked up per call: benchmarks/step_overhead.py swaps _cpu
        self.x_dtype, self.out_dtype = x_dtype, out_dtype
        self._args, self._names = a, (_DTYPES[x_dtype], _DTYPES[out_dtype])
        self._operands = (packed, colsum, w_scales, bias, gamma, beta)  # alive as long as the pointers

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                 act_start: int | None = None) -> torch.Tensor:
        """x: [rows, in_features] of x_dtype, rows may be strided; residual: [rows, out_features] of
        out_dtype (dense last dim); act_start: gelu (tanh) on columns >= act_start (None: none)."""
        n, k = self.out_features, self.in_features
        if not x.is_cpu:
            raise ValueError(f"x: expected a tensor on cpu, got {x.device}")
        if x.dtype != self.x_dtype:
            raise TypeError(f"x: expected dtype {self.x_dtype} (the layer's), got {x.dtype}")
        if x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1:
            raise ValueError(f"x: expected a [rows, {k}] tensor with a dense last dim, "
                             f"got shape {list(x.shape)} strides {x.stride()}")
        rows = x.shape[0]
        res_ptr, res_stride = 0, 0
        if residual is not None:
            if not residual.is_cpu or residual.dtype != self.out_dtype or residual.shape != (rows, n) \
                    or residual.stride(1) != 1:
                raise ValueError(f"residual: expected a [{rows}, {n}] {self.out_dtype} tensor on cpu with a "
                                 f"dense last dim, got {list(residual.shape)} {residual.dtype} "
                                 f"strides {residual.stride()} on {residual.device}")
            res_ptr, res_stride = residual.data_ptr(), max(residual.stride(0), n)
        if act_start is None:
            act_start = n
        elif not 0 <= act_start <= n:
            raise ValueError(f"act_start: expected None or 0..{n}, got {act_start}")
        out = torch.empty(rows, n, dtype=self.out_dtype)
        getattr(_cpu, self._run)(self._args, x.data_ptr(), out.data_ptr(), res_ptr, rows, max(x.stride(0), k),
                                 res_stride, int(act_start), *self._names)
        return out


def _in_features(x: torch.Tensor) -> int:
    return x.shape[-1] if x.dim() else 0  # a bad x is named by the call's own check


def bind_int8_linear(packed: torch.Tensor, colsum: torch.Tensor, w_scales: torch.Tensor, in_features: int,
                     bias: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                     beta: torch.Tensor | None = None, eps: float = 1e-5, x_dtype: torch.dtype = torch.bfloat16,
                     out_dtype: torch.dtype | None = None) -> PackedLinear:
    """int8_linear with its fixed operands bound (checked once): f(x, residual=None, act_start=None)."""
    return PackedLinear("int8", packed, in_features, w_scales.shape[0], colsum, w_scales, bias, gamma, beta,
                        eps, x_dtype, out_dtype)


def bind_bf16_linear(packed: torch.Tensor, in_features: int, out_features: int, bias: torch.Tensor | None = None,
                     gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None, eps: float = 1e-5,
                     x_dtype: torch.dtype = torch.bfloat16, out_dtype: torch.dtype | None = None) -> PackedLinear:
    """bf16_linear with its fixed operands bound (checked once): f(x, residual=None, act_start=None)."""
    return PackedLinear("bf16", packed, in_features, out_features, None, None, bias, gamma, beta, eps, x_dtype,
                        out_dtype)


def int8_linear(x: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                act_start: int | None = None, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """See kernels.reference.int8_linear: one call quantises x and runs the GEMM with its epilogue.
    A layer binds its operands once instead (bind_int8_linear) and calls per step."""
    return bind_int8_linear(packed, colsum, w_scales, _in_features(x), bias, gamma, beta, eps, x.dtype,
                            out_dtype)(x, residual, act_start)


def bf16_linear(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, act_start: int | None = None,
                gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None, eps: float = 1e-5,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """See kernels.reference.bf16_linear (one call: layer norm, bf16 GEMM, epilogue)."""
    return bind_bf16_linear(packed, _in_features(x), out_features, bias, gamma, beta, eps, x.dtype,
                            out_dtype)(x, residual, act_start)


def bind_int4_linear(packed: torch.Tensor, params: torch.Tensor, in_features: int, out_features: int,
                     bias: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                     beta: torch.Tensor | None = None, eps: float = 1e-5, x_dtype: torch.dtype = torch.bfloat16,
                     out_dtype: torch.dtype | None = None) -> PackedLinear:
    """int4_linear with its fixed operands bound (checked once): f(x, residual=None, act_start=None)."""
    return PackedLinear("int4", packed, in_features, out_features, None, params, bias, gamma, beta, eps, x_dtype,
                        out_dtype)


def int4_linear(x: torch.Tensor, packed: torch.Tensor, params: torch.Tensor, out_features: int,
                bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                act_start: int | None = None, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """See kernels.reference.int4_linear (one call: layer norm, int8 rows, 4-bit GEMM, epilogue)."""
    return bind_int4_linear(packed, params, _in_features(x), out_features, bias, gamma, beta, eps, x.dtype,
                            out_dtype)(x, residual, act_start)
