"""C++ CPU ops (kernels._cpu, pybind11 + OpenMP) behind the same signatures as kernels.reference.
This wrapper checks shapes, dtypes and strides (TypeError / ValueError naming the argument), then
hands raw pointers, sizes and element strides to the C++ code, which releases the GIL."""
from __future__ import annotations

import torch

from . import _cpu
from ._checks import (check_attention_rows, check_cache, check_cache_scales, check_device,
                      check_embedding_shapes, check_rotary_rows, check_rotary_table, check_window)
from .cpu_linear import (_CPU, _DTYPES, PackedLinear, _dtype_name, _ptr, bf16_linear, bind_bf16_linear,  # noqa: F401
                         bind_int4_linear, bind_int8_linear, int4_linear, int8_linear, packed_outputs,
                         quantize_pack_int4, quantize_pack_int8, quantize_rows)

_CACHE_DTYPES = {**_DTYPES, torch.int8: "int8"}  # int8: per-row scales in k_scale / v_scale


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


def _check_cache(k_cache, v_cache, k_scale, v_scale) -> None:
    """A layer's KV cache as the C++ ops take it: contiguous fp32 / bf16 / int8 (+ fp32 scales)."""
    check_device(_CPU, k_cache=k_cache, v_cache=v_cache)
    check_cache(k_cache, v_cache)
    if k_cache.dtype not in _CACHE_DTYPES:
        raise TypeError(f"k_cache: the CPU kernels take float32, bfloat16 or int8 caches, got {k_cache.dtype}")
    check_cache_scales(k_cache, v_cache, k_scale, v_scale)


class RotaryStoreKV:
    """rotary_store_kv with one layer's fixed operands (cos/sin table, rotary width, KV cache and its
    scales) checked once and held in the C++ argument template; a call passes one step's rows:
    `op(q, k, v, positions, slot_mapping)` (see kernels.reference.rotary_store_kv)."""

    __slots__ = ("num_kv_heads", "head_dim", "_args", "_cache_dtype", "_operands")

    def __init__(self, cos_sin: torch.Tensor | None, rotary_dim: int, interleaved: bool,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale: torch.Tensor | None = None,
                 v_scale: torch.Tensor | None = None):
        _check_cache(k_cache, v_cache, k_scale, v_scale)
        self.num_kv_heads, self.head_dim = k_cache.shape[2], k_cache.shape[3]
        if cos_sin is not None:
            check_device(_CPU, cos_sin=cos_sin)
        check_rotary_table(cos_sin, rotary_dim, self.head_dim)
        a = _cpu.RotaryArgs()
        if rotary_dim > 0:
            cos_sin = cos_sin.contiguous()
            a.cos_sin, a.max_positions = cos_sin.data_ptr(), cos_sin.shape[0]
        a.k_cache, a.v_cache, a.k_scale, a.v_scale = k_cache.data_ptr(), v_cache.data_ptr(), _ptr(k_scale), _ptr(v_scale)
        a.num_kv_heads, a.head_dim, a.rotary_dim, a.interleaved = self.num_kv_heads, self.head_dim, rotary_dim, bool(interleaved)
        a.num_blocks, a.block_size = k_cache.shape[0], k_cache.shape[1]
        self._args, self._cache_dtype = a, _CACHE_DTYPES[k_cache.dtype]
        self._operands = (cos_sin, k_cache, v_cache, k_scale, v_scale)  # alive as long as the pointers

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
        """q: [tokens, heads, head_dim], k, v: [tokens, kv_heads, head_dim] (strided views with a
        dense last dim are fine; rotated in place); positions, slot_mapping: [tokens]."""
        check_device(_CPU, q=q, k=k, v=v, positions=positions, slot_mapping=slot_mapping)
        dtype = _dtype_name(q, "q")
        check_rotary_rows(q, k, v, positions, slot_mapping, self.num_kv_heads, self.head_dim)
        positions, slot_mapping = _i64(positions), _i64(slot_mapping)
        qs, ks, vs = q.stride(), k.stride(), v.stride()
        _cpu.rotary_store_kv(self._args, q.data_ptr(), k.data_ptr(), v.data_ptr(), positions.data_ptr(),
                             slot_mapping.data_ptr(), q.shape[0], q.shape[1], qs[0], qs[1], ks[0], ks[1],
                             vs[0], vs[1], dtype, self._cache_dtype)


class PagedAttention:
    """paged_attention with one layer's fixed operands (KV cache and its scales, scale, window)
    checked once and held in the C++ argument template; a call passes one step's queries and
    metadata: `op(q, block_tables, seq_lens, cu_seqlens_q)` (see kernels.reference.paged_attention)."""

    __slots__ = ("num_kv_heads", "head_dim", "_args", "_cache_dtype", "_operands")

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float, window: int = 0,
                 k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None):
        _check_cache(k_cache, v_cache, k_scale, v_scale)
        check_window(window)
        self.num_kv_heads, self.head_dim = k_cache.shape[2], k_cache.shape[3]
        a = _cpu.AttentionArgs()
        a.k_cache, a.v_cache, a.k_scale, a.v_scale = k_cache.data_ptr(), v_cache.data_ptr(), _ptr(k_scale), _ptr(v_scale)
        a.num_kv_heads, a.head_dim = self.num_kv_heads, self.head_dim
        a.num_blocks, a.block_size = k_cache.shape[0], k_cache.shape[1]
        a.scale, a.window = float(scale), int(window)
        self._args, self._cache_dtype = a, _CACHE_DTYPES[k_cache.dtype]
        self._operands = (k_cache, v_cache, k_scale, v_scale)

    def __call__(self, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                 cu_seqlens_q: torch.Tensor) -> torch.Tensor:
        """q: [tokens, heads, head_dim] (a strided view with a dense last dim is fine) -> a new
        contiguous [tokens, heads, head_dim] tensor in q's dtype."""
        check_device(_CPU, q=q, block_tables=block_tables, seq_lens=seq_lens, cu_seqlens_q=cu_seqlens_q)
        dtype = _dtype_name(q, "q")
        check_attention_rows(q, block_tables, seq_lens, cu_seqlens_q, self.num_kv_heads, self.head_dim)
        block_tables, seq_lens, cu_seqlens_q = _i32(block_tables), _i32(seq_lens), _i32(cu_seqlens_q)
        num_tokens, num_heads, head_dim = q.shape
        out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype)
        qs = q.stride()
        _cpu.paged_attention(self._args, q.data_ptr(), out.data_ptr(), block_tables.data_ptr(), seq_lens.data_ptr(),
                             cu_seqlens_q.data_ptr(), num_tokens, block_tables.shape[0], num_heads,
                             block_tables.shape[1], qs[0], qs[1], dtype, self._cache_dtype)
        return out


def bind_rotary_store_kv(cos_sin: torch.Tensor | None, rotary_dim: int, interleaved: bool,
                         k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale: torch.Tensor | None = None,
                         v_scale: torch.Tensor | None = None) -> RotaryStoreKV:
    """rotary_store_kv with a layer's fixed operands bound: f(q, k, v, positions, slot_mapping)."""
    return RotaryStoreKV(cos_sin, rotary_dim, interleaved, k_cache, v_cache, k_scale, v_scale)


def bind_paged_attention(k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float, window: int = 0,
                         k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> PagedAttention:
    """paged_attention with a layer's fixed operands bound: f(q, block_tables, seq_lens, cu_seqlens_q)."""
    return PagedAttention(k_cache, v_cache, scale, window, k_scale, v_scale)


def rotary_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    cos_sin: torch.Tensor | None, rotary_dim: int, interleaved: bool,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> None:
    """See kernels.reference.rotary_store_kv. q, k, v may be strided views ([tokens, heads, dim]
    with a dense last dim); they are rotated in place. Caches: contiguous, fp32, bf16 or int8.
    A layer binds its fixed operands once instead (bind_rotary_store_kv)."""
    RotaryStoreKV(cos_sin, rotary_dim, interleaved, k_cache, v_cache, k_scale, v_scale)(q, k, v, positions,
                                                                                        slot_mapping)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, scale: float, window: int = 0,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """See kernels.reference.paged_attention. q may be a strided view with a dense last dim;
    returns a contiguous [num_tokens, num_heads, head_dim] tensor in q's dtype. A layer binds its
    fixed operands once instead (bind_paged_attention)."""
    return PagedAttention(k_cache, v_cache, scale, window, k_scale, v_scale)(q, block_tables, seq_lens, cu_seqlens_q)


def argmax_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """See kernels.reference.argmax_logsumexp (one pass per row, no torch thread team)."""
    if not logits.is_cpu or logits.dtype != torch.float32:
        raise TypeError(f"logits: expected a float32 tensor on cpu, got {logits.dtype} on {logits.device}")
    if logits.dim() != 2 or logits.shape[1] == 0 or logits.stride(1) != 1:
        raise ValueError(f"logits: expected a [rows, vocab] tensor with vocab > 0 and a dense last dim, "
                         f"got shape {list(logits.shape)} strides {logits.stride()}")
    rows, vocab = logits.shape
    argmax = torch.empty(rows, dtype=torch.int64)
    lse = torch.empty(rows, dtype=torch.float32)
    _cpu.argmax_logsumexp(logits.data_ptr(), argmax.data_ptr(), lse.data_ptr(), rows, vocab,
                          max(logits.stride(0), vocab))
    return argmax, lse


def team_thread_ids(num_threads: int) -> list[int]:
    """OS thread ids of an OpenMP team of num_threads in team order (0: the caller). The kernels
    and torch share libgomp's pool, so these are the threads every later team of that size uses."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return list(_cpu.team_thread_ids(num_threads))
