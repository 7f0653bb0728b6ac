"""C++ CPU ops (kernels._cpu, pybind11 + OpenMP) behind the same signatures as kernels.reference.
This wrapper checks shapes, dtypes and strides (TypeError / ValueError naming the argument), then
hands raw pointers, sizes and element strides to the C++ code, which releases the GIL."""
from __future__ import annotations

import torch

from kernels import _cpu
from kernels._checks import (check_attention_args, check_cache_scales, check_device,
                             check_embedding_shapes, check_rotary_args)

_CPU = torch.device("cpu")
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
_CACHE_DTYPES = {**_DTYPES, torch.int8: "int8"}  # int8: per-row scales in k_scale / v_scale


def _dtype_name(t: torch.Tensor, name: str) -> str:
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: the CPU kernels take float32 or bfloat16, got {t.dtype}")
    return _DTYPES[t.dtype]


def _i64(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.int64 and t.is_contiguous():  # the common case, without two dispatcher calls
        return t
    return t.to(torch.int64).contiguous()


def _i32(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.int32 and t.is_contiguous():
        return t
    return t.to(torch.int32).contiguous()


def gated_embedding(ids: torch.Tensor, modality: torch.Tensor, remap: torch.Tensor,
                    wte: torch.Tensor, wpe: torch.Tensor | None,
                    positions: torch.Tensor) -> torch.Tensor:
    """See kernels.reference.gated_embedding."""
    dtype = _dtype_name(wte, "wte")
    if wpe is not None and wpe.dtype != wte.dtype:
        raise TypeError(f"wpe dtype {wpe.dtype} differs from wte dtype {wte.dtype}")
    check_embedding_shapes(ids, modality, remap, wte, wpe, positions)
    wte = wte.contiguous()
    ids, modality, remap, positions = _i64(ids), _i64(modality), _i64(remap), _i64(positions)
    num_tokens, hidden = ids.shape[0], wte.shape[1]
    out = torch.empty(num_tokens, hidden, dtype=wte.dtype)
    wpe_ptr, max_positions = 0, 0
    if wpe is not None:
        wpe = wpe.contiguous()
        wpe_ptr, max_positions = wpe.data_ptr(), wpe.shape[0]
    _cpu.gated_embedding(ids.data_ptr(), modality.data_ptr(), remap.data_ptr(), wte.data_ptr(),
                         wpe_ptr, positions.data_ptr(), out.data_ptr(), num_tokens, hidden,
                         wte.shape[0], max_positions, dtype)
    return out


def _cache_ok(k_cache: torch.Tensor, v_cache: torch.Tensor, head_dim: int, k_scale, v_scale) -> bool:
    """True when check_device / check_cache / check_cache_scales (and head_dim) would pass for the
    caches: the cheap per-call test of the common case, the full checks (with their errors) run
    only when it fails."""
    if not (k_cache.is_cpu and v_cache.is_cpu and k_cache.dim() == 4 and k_cache.shape[3] == head_dim
            and k_cache.dtype in _CACHE_DTYPES and v_cache.dtype == k_cache.dtype
            and v_cache.shape == k_cache.shape and k_cache.is_contiguous() and v_cache.is_contiguous()):
        return False
    if k_cache.dtype != torch.int8:
        return k_scale is None and v_scale is None
    return all(t is not None and t.is_cpu and t.dtype == torch.float32 and t.is_contiguous()
               and t.shape == k_cache.shape[:3] for t in (k_scale, v_scale))


def _scale_ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _rotary_fast_ok(q, k, v, positions, cos_sin, rotary_dim, k_cache, v_cache, slot_mapping,
                    k_scale, v_scale) -> bool:
    if not (q.is_cpu and k.is_cpu and v.is_cpu and q.dtype in _DTYPES and k.dtype == q.dtype
            and v.dtype == q.dtype and q.dim() == 3 and q.stride(2) == 1):
        return False
    num_tokens, _, head_dim = q.shape
    if not _cache_ok(k_cache, v_cache, head_dim, k_scale, v_scale):
        return False
    kv_shape = (num_tokens, k_cache.shape[2], head_dim)
    if k.shape != kv_shape or v.shape != kv_shape or positions.shape != (num_tokens,) \
            or slot_mapping.shape != (num_tokens,) or k.stride(2) != 1 or v.stride(2) != 1:
        return False
    if rotary_dim < 0 or rotary_dim % 2 or rotary_dim > head_dim:
        return False
    return rotary_dim == 0 or (cos_sin is not None and cos_sin.dtype == torch.float32
                               and cos_sin.dim() == 2 and cos_sin.shape[1] == rotary_dim)


def rotary_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    cos_sin: torch.Tensor | None, rotary_dim: int, interleaved: bool,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> None:
    """See kernels.reference.rotary_store_kv. q, k, v may be strided views ([tokens, heads, dim]
    with a dense last dim); they are rotated in place. Caches: contiguous, fp32, bf16 or int8."""
    if not _rotary_fast_ok(q, k, v, positions, cos_sin, rotary_dim, k_cache, v_cache, slot_mapping,
                           k_scale, v_scale):
        _rotary_checks(q, k, v, positions, cos_sin, rotary_dim, k_cache, v_cache, slot_mapping)
        check_cache_scales(k_cache, v_cache, k_scale, v_scale)
    num_tokens, _, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    a = _cpu.RotaryArgs()
    if rotary_dim > 0:
        cos_sin = cos_sin.contiguous()
        a.cos_sin, a.max_positions = cos_sin.data_ptr(), cos_sin.shape[0]
    positions, slot_mapping = _i64(positions), _i64(slot_mapping)
    a.q, a.k, a.v = q.data_ptr(), k.data_ptr(), v.data_ptr()
    a.positions, a.slot_mapping = positions.data_ptr(), slot_mapping.data_ptr()
    a.k_cache, a.v_cache = k_cache.data_ptr(), v_cache.data_ptr()
    a.num_tokens, a.num_heads, a.num_kv_heads, a.head_dim = num_tokens, q.shape[1], num_kv_heads, head_dim
    a.rotary_dim, a.interleaved = rotary_dim, bool(interleaved)
    a.num_blocks, a.block_size = k_cache.shape[0], k_cache.shape[1]
    a.q_stride_t, a.q_stride_h = q.stride(0), q.stride(1)
    a.k_stride_t, a.k_stride_h = k.stride(0), k.stride(1)
    a.v_stride_t, a.v_stride_h = v.stride(0), v.stride(1)
    a.k_scale, a.v_scale = _scale_ptr(k_scale), _scale_ptr(v_scale)
    _cpu.rotary_store_kv(a, _DTYPES[q.dtype], _CACHE_DTYPES[k_cache.dtype])


def _rotary_checks(q, k, v, positions, cos_sin, rotary_dim, k_cache, v_cache, slot_mapping) -> None:
    """The full argument checks of rotary_store_kv; raise TypeError / ValueError naming the argument."""
    check_device(_CPU, q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache)
    _dtype_name(q, "q")
    check_rotary_args(q, k, v, positions, cos_sin, rotary_dim, k_cache, v_cache, slot_mapping)
    if k_cache.dtype not in _CACHE_DTYPES:
        raise TypeError(f"k_cache: the CPU kernels take float32, bfloat16 or int8 caches, got {k_cache.dtype}")


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, scale: float, window: int = 0,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """See kernels.reference.paged_attention. q may be a strided view with a dense last dim;
    returns a contiguous [num_tokens, num_heads, head_dim] tensor in q's dtype."""
    if not (q.is_cpu and q.dtype in _DTYPES and q.dim() == 3 and q.stride(2) == 1
            and _cache_ok(k_cache, v_cache, q.shape[2], k_scale, v_scale) and k_cache.shape[2] > 0
            and q.shape[1] % k_cache.shape[2] == 0 and block_tables.dim() == 2
            and seq_lens.shape == (block_tables.shape[0],)
            and cu_seqlens_q.shape == (block_tables.shape[0] + 1,) and window >= 0):
        _attention_checks(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, window)
        check_cache_scales(k_cache, v_cache, k_scale, v_scale)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    num_seqs = block_tables.shape[0]
    block_tables, seq_lens, cu_seqlens_q = _i32(block_tables), _i32(seq_lens), _i32(cu_seqlens_q)
    out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype)
    a = _cpu.AttentionArgs()
    a.q, a.k_cache, a.v_cache, a.out = q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr()
    a.block_tables, a.seq_lens = block_tables.data_ptr(), seq_lens.data_ptr()
    a.cu_seqlens_q = cu_seqlens_q.data_ptr()
    a.num_tokens, a.num_seqs, a.num_heads, a.num_kv_heads = num_tokens, num_seqs, num_heads, num_kv_heads
    a.head_dim, a.num_blocks, a.block_size = head_dim, k_cache.shape[0], k_cache.shape[1]
    a.max_blocks_per_seq = block_tables.shape[1]
    a.q_stride_t, a.q_stride_h = q.stride(0), q.stride(1)
    a.scale, a.window = float(scale), int(window)
    a.k_scale, a.v_scale = _scale_ptr(k_scale), _scale_ptr(v_scale)
    _cpu.paged_attention(a, _DTYPES[q.dtype], _CACHE_DTYPES[k_cache.dtype])
    return out


def _attention_checks(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, window) -> None:
    """The full argument checks of paged_attention; raise TypeError / ValueError naming the argument."""
    check_device(_CPU, q=q, k_cache=k_cache, v_cache=v_cache)
    _dtype_name(q, "q")
    check_attention_args(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, window)
    if k_cache.dtype not in _CACHE_DTYPES:
        raise TypeError(f"k_cache: the CPU kernels take float32, bfloat16 or int8 caches, got {k_cache.dtype}")


def _check_rows_2d(t: torch.Tensor, name: str, dtype: torch.dtype | None = None) -> None:
    check_device(_CPU, **{name: t})
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"{name}: expected a [rows, dim] tensor with a dense last dim, "
                         f"got shape {list(t.shape)} strides {t.stride()}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")


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


def _vector_ok(t: torch.Tensor | None, dim: int, dtype: torch.dtype) -> bool:
    return t is None or (t.dtype == dtype and t.shape == (dim,) and t.is_cpu and t.is_contiguous())


# Packed weight layouts of the two linear ops: (weight dtype, weight values per 32-bit word).
_PACKED = {"int8": (torch.int8, 4), "bf16": (torch.bfloat16, 2)}


def _linear_ok(kind, x, packed, n, colsum, w_scales, bias, residual, act_start, gamma, beta, out_dtype) -> bool:
    """The common case in a few attribute reads (a decode step makes ~50 of these calls)."""
    if x.dtype not in _DTYPES or out_dtype not in _DTYPES or x.dim() != 2 or x.stride(1) != 1 or not x.is_cpu:
        return False
    rows, k = x.shape
    dtype, per_word = _PACKED[kind]
    return (packed.shape == (-(-n // 16), -(-k // per_word), 16, per_word) and packed.dtype == dtype
            and packed.is_cpu and packed.is_contiguous()
            and (kind != "int8" or (_vector_ok(colsum, 16 * packed.shape[0], torch.int32)
                                    and _vector_ok(w_scales, n, torch.float32)))
            and _vector_ok(bias, n, out_dtype)
            and _vector_ok(gamma, k, x.dtype) and _vector_ok(beta, k, x.dtype) and (gamma is not None or beta is None)
            and (residual is None or (residual.dtype == out_dtype and residual.shape == (rows, n)
                                      and residual.stride(1) == 1 and residual.is_cpu))
            and (act_start is None or 0 <= act_start <= n))


def _linear_checks(kind, x, packed, n, colsum, w_scales, bias, residual, act_start, gamma, beta, out_dtype) -> None:
    """The errors naming the bad argument (only reached when _linear_ok fails)."""
    _dtype_name(x, "x")
    if out_dtype not in _DTYPES:
        raise TypeError(f"out_dtype: the CPU kernels take float32 or bfloat16, got {out_dtype}")
    _check_rows_2d(x, "x")
    k = x.shape[1]
    dtype, per_word = _PACKED[kind]
    shape = (-(-n // 16), -(-k // per_word), 16, per_word)
    check_device(_CPU, packed=packed)
    if packed.shape != shape or packed.dtype != dtype or not packed.is_contiguous():
        raise ValueError(f"packed: expected a contiguous {dtype} {list(shape)} tensor (pack_{kind}_weight of a "
                         f"[{n}, {k}] weight), got {list(packed.shape)} {packed.dtype}")
    vectors = [(bias, "bias", n, out_dtype), (gamma, "gamma", k, x.dtype), (beta, "beta", k, x.dtype)]
    if kind == "int8":
        vectors += [(colsum, "colsum", shape[0] * 16, torch.int32), (w_scales, "w_scales", n, torch.float32)]
    for t, name, dim, dtype in vectors:
        if not _vector_ok(t, dim, dtype):
            _vector(t, name, dim, dtype)
            raise ValueError(f"{name}: expected a contiguous [{dim}] {dtype} tensor")
    if gamma is None and beta is not None:
        raise ValueError("beta: given without gamma")
    if residual is not None:
        _check_rows_2d(residual, "residual", out_dtype)
        if residual.shape != (x.shape[0], n):
            raise ValueError(f"residual: expected shape {[x.shape[0], n]}, got {list(residual.shape)}")
    if act_start is not None and not 0 <= act_start <= n:
        raise ValueError(f"act_start: expected None or 0..{n}, got {act_start}")


def _linear(kind, x, packed, n, colsum, w_scales, bias, residual, act_start, gamma, beta, eps, out_dtype):
    out_dtype = out_dtype or x.dtype
    if not _linear_ok(kind, x, packed, n, colsum, w_scales, bias, residual, act_start, gamma, beta, out_dtype):
        _linear_checks(kind, x, packed, n, colsum, w_scales, bias, residual, act_start, gamma, beta, out_dtype)
    num_rows, in_features = x.shape
    out = torch.empty(num_rows, n, dtype=out_dtype)
    a = _cpu.PackedLinearArgs()
    a.x, a.packed, a.out = x.data_ptr(), packed.data_ptr(), out.data_ptr()
    if kind == "int8":
        a.colsum, a.w_scales = colsum.data_ptr(), w_scales.data_ptr()
    a.gamma = 0 if gamma is None else gamma.data_ptr()
    a.beta = 0 if beta is None else beta.data_ptr()
    a.bias = 0 if bias is None else bias.data_ptr()
    a.residual = 0 if residual is None else residual.data_ptr()
    a.num_rows, a.in_features, a.out_features, a.eps = num_rows, in_features, n, float(eps)
    a.x_stride, a.out_stride = max(x.stride(0), in_features), n
    a.res_stride = 0 if residual is None else max(residual.stride(0), n)
    a.act_start = n if act_start is None else int(act_start)
    (_cpu.int8_linear if kind == "int8" else _cpu.bf16_linear)(a, _DTYPES[x.dtype], _DTYPES[out_dtype])
    return out


def int8_linear(x: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                act_start: int | None = None, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """See kernels.reference.int8_linear: one call quantises x and runs the GEMM with its epilogue.
    It runs once per linear layer per step, so the common case is checked in a few attribute reads."""
    return _linear("int8", x, packed, w_scales.shape[0], colsum, w_scales, bias, residual, act_start, gamma,
                   beta, eps, out_dtype)


def bf16_linear(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, act_start: int | None = None,
                gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None, eps: float = 1e-5,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """See kernels.reference.bf16_linear (one call: layer norm, bf16 GEMM, epilogue)."""
    return _linear("bf16", x, packed, out_features, None, None, bias, residual, act_start, gamma, beta, eps,
                   out_dtype)
