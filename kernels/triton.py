"""Triton ops (the GPU path) behind the same signatures as kernels.reference. Each op is one
`_name_kernel` plus a host launcher that checks shapes/dtypes/strides; variants are tl.constexpr flags.

On CUDA tensors they compile for the GPU. With TRITON_INTERPRET=1 set before triton is imported they
run in Triton's interpreter on CPU tensors, which is how they are tested on machines without a GPU
(slow: keep those shapes small). `INTERPRETED` tells which mode this import got.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._bind import closure_binders
from ._checks import (check_attention_args, check_device, check_embedding_shapes,
                             check_rotary_args)

INTERPRETED = bool(triton.knobs.runtime.interpret)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_float_cache(k_cache: torch.Tensor, k_scale, v_scale) -> None:
    """The Triton kernels read float caches only (int8 KV caches are a CPU mode)."""
    if k_cache.dtype == torch.int8 or k_scale is not None or v_scale is not None:
        raise ValueError("k_cache: int8 KV caches (kv_cache_dtype='int8') run on the CPU kernels only")
    _check_dtype(k_cache, "k_cache")


def _check_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: the Triton kernels take float32, bfloat16 or float16, got {t.dtype}")


def _device(t: torch.Tensor, name: str) -> torch.device:
    """The device the launch runs on; CPU tensors only work in the interpreter."""
    if t.device.type == "cpu" and not INTERPRETED:
        raise ValueError(f"{name}: Triton needs CUDA tensors; CPU tensors only run under TRITON_INTERPRET=1, "
                         "which must be set before triton is imported")
    return t.device


@triton.jit
def _cast(x, dtype: tl.constexpr):
    """x.to(dtype) with fp32 -> bf16 rounded to nearest even explicitly: the interpreter's own
    conversion truncates. Rounding in the integer bits leaves the low half zero, so the final
    conversion is exact on every backend."""
    if dtype == tl.bfloat16 and x.dtype == tl.float32:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000
        x = tl.where(x != x, x, u.to(tl.float32, bitcast=True))
    return x.to(dtype)


@triton.jit
def _gated_embedding_kernel(ids_ptr, modality_ptr, remap_ptr, wte_ptr, wpe_ptr, positions_ptr, out_ptr,
                            hidden, stride_wte, stride_wpe,
                            HAS_WPE: tl.constexpr, BLOCK: tl.constexpr):
    # Program (t, c) writes out[t, c * BLOCK:(c + 1) * BLOCK] (out is contiguous [num_tokens, hidden])
    # from row wte[modality[t] ? remap[ids[t]] : ids[t]] (+ wpe[positions[t]], added in fp32).
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    token = tl.load(ids_ptr + t)
    code = tl.load(modality_ptr + t) != 0
    row = tl.load(remap_ptr + token, mask=code, other=0)
    row = tl.where(code, row, token)
    x = tl.load(wte_ptr + row * stride_wte + cols, mask=mask)
    if HAS_WPE:
        pos = tl.load(positions_ptr + t)
        x = x.to(tl.float32) + tl.load(wpe_ptr + pos * stride_wpe + cols, mask=mask).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64) * hidden + cols, _cast(x, out_ptr.dtype.element_ty), mask=mask)


def gated_embedding(ids: torch.Tensor, modality: torch.Tensor, remap: torch.Tensor,
                    wte: torch.Tensor, wpe: torch.Tensor | None,
                    positions: torch.Tensor) -> torch.Tensor:
    """hidden[t] = wte[modality[t] ? remap[ids[t]] : ids[t]] (+ wpe[positions[t]]).

    ids, modality, positions: [num_tokens] int; remap: [vocab] int; wte: [vocab, hidden] (rows dense);
    wpe: [max_positions, hidden] or None. Returns contiguous [num_tokens, hidden] in wte's dtype.
    """
    _check_dtype(wte, "wte")
    if wpe is not None and wpe.dtype != wte.dtype:
        raise TypeError(f"wpe dtype {wpe.dtype} differs from wte dtype {wte.dtype}")
    check_embedding_shapes(ids, modality, remap, wte, wpe, positions)
    device = _device(wte, "wte")
    check_device(device, ids=ids, modality=modality, remap=remap, positions=positions,
                 **({"wpe": wpe} if wpe is not None else {}))
    ids, modality, remap, positions = (t.to(torch.int64).contiguous() for t in (ids, modality, remap, positions))
    wte = wte if wte.stride(1) == 1 else wte.contiguous()
    wpe = wte if wpe is None else (wpe if wpe.stride(1) == 1 else wpe.contiguous())
    num_tokens, hidden = ids.shape[0], wte.shape[1]
    out = torch.empty(num_tokens, hidden, dtype=wte.dtype, device=device)
    block = min(triton.next_power_of_2(hidden), 1024)
    if num_tokens:
        _gated_embedding_kernel[(num_tokens, triton.cdiv(hidden, block))](
            ids, modality, remap, wte, wpe, positions, out, hidden, wte.stride(0), wpe.stride(0),
            HAS_WPE=wpe is not wte, BLOCK=block)
    return out


@triton.jit
def _rotate_heads(x_ptr, stride_h, num_heads, cos, sin, cache_ptr, slot, HEAD_DIM: tl.constexpr,
                  ROTARY_DIM: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_R: tl.constexpr):
    # x: [num_heads, head_dim] rows stride_h apart; rotates x[:, :ROTARY_DIM] in place in fp32 (one
    # rounding to x's dtype) and, when cache_ptr is given and slot >= 0, stores the rotated pairs in
    # cache[slot] ([num_heads, HEAD_DIM] dense). Frequency i rotates the pair (2i, 2i + 1) when
    # INTERLEAVED (GPT-J / CodeGen), else (i, i + ROTARY_DIM / 2) (NeoX).
    HALF: tl.constexpr = ROTARY_DIM // 2
    h = tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK_R)[None, :]
    mask = (h < num_heads) & (i < HALF)
    if INTERLEAVED:
        idx1, idx2 = 2 * i, 2 * i + 1
    else:
        idx1, idx2 = i, i + HALF
    x1 = tl.load(x_ptr + h * stride_h + idx1, mask=mask).to(tl.float32)
    x2 = tl.load(x_ptr + h * stride_h + idx2, mask=mask).to(tl.float32)
    o1 = _cast(x1 * cos - x2 * sin, x_ptr.dtype.element_ty)
    o2 = _cast(x2 * cos + x1 * sin, x_ptr.dtype.element_ty)
    tl.store(x_ptr + h * stride_h + idx1, o1, mask=mask)
    tl.store(x_ptr + h * stride_h + idx2, o2, mask=mask)
    if cache_ptr is not None:
        if slot >= 0:
            dst = cache_ptr + slot * (num_heads * HEAD_DIM) + h * HEAD_DIM
            tl.store(dst + idx1, _cast(o1, cache_ptr.dtype.element_ty), mask=mask)
            tl.store(dst + idx2, _cast(o2, cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_store_kv_kernel(q_ptr, k_ptr, v_ptr, positions_ptr, cos_sin_ptr, k_cache_ptr, v_cache_ptr,
                            slot_ptr, num_heads, num_kv_heads, stride_qt, stride_qh, stride_kt, stride_kh,
                            stride_vt, stride_vh,
                            HEAD_DIM: tl.constexpr, ROTARY_DIM: tl.constexpr, INTERLEAVED: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCK_KVH: tl.constexpr, BLOCK_R: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    # Program t handles token t: rotates q[t] and k[t], stores k[t], v[t] into cache slot slot[t]
    # (slot -1: no store). Caches are dense [num_slots, num_kv_heads, HEAD_DIM] (blocks flattened).
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    q_row, k_row = q_ptr + t * stride_qt, k_ptr + t * stride_kt
    if ROTARY_DIM > 0:
        pos = tl.load(positions_ptr + t)
        i = tl.arange(0, BLOCK_R)[None, :]
        cos = tl.load(cos_sin_ptr + pos * ROTARY_DIM + i, mask=i < ROTARY_DIM // 2)
        sin = tl.load(cos_sin_ptr + pos * ROTARY_DIM + ROTARY_DIM // 2 + i, mask=i < ROTARY_DIM // 2)
        _rotate_heads(q_row, stride_qh, num_heads, cos, sin, None, slot, HEAD_DIM, ROTARY_DIM, INTERLEAVED,
                      BLOCK_H, BLOCK_R)
        _rotate_heads(k_row, stride_kh, num_kv_heads, cos, sin, k_cache_ptr, slot, HEAD_DIM, ROTARY_DIM,
                      INTERLEAVED, BLOCK_KVH, BLOCK_R)
    # The unrotated dims [ROTARY_DIM, HEAD_DIM) of k, and all of v, are copied as they are.
    if slot >= 0:
        h = tl.arange(0, BLOCK_KVH)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        dst = slot * (num_kv_heads * HEAD_DIM) + h * HEAD_DIM + d
        v_mask = (h < num_kv_heads) & (d < HEAD_DIM)
        k_mask = v_mask & (d >= ROTARY_DIM)
        k = tl.load(k_row + h * stride_kh + d, mask=k_mask)
        tl.store(k_cache_ptr + dst, _cast(k, k_cache_ptr.dtype.element_ty), mask=k_mask)
        v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=v_mask)
        tl.store(v_cache_ptr + dst, _cast(v, v_cache_ptr.dtype.element_ty), mask=v_mask)


def rotary_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    cos_sin: torch.Tensor | None, rotary_dim: int, interleaved: bool,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> None:
    """Rotate q and k in place on their first rotary_dim dims, then store k, v in the cache.

    q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim] (views with a
    dense last dim are fine); positions, slot_mapping: [num_tokens] int; cos_sin: [max_positions,
    rotary_dim] fp32 (unused when rotary_dim == 0); caches: contiguous [num_blocks, block_size,
    num_kv_heads, head_dim]. Slot -1 skips the store. Positions and slots are not bounds-checked here
    (that would need a device sync): the engine owns them.
    """
    _check_dtype(q, "q")
    check_rotary_args(q, k, v, positions, cos_sin, rotary_dim, k_cache, v_cache, slot_mapping)
    _check_float_cache(k_cache, k_scale, v_scale)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if rotary_dim > 0:
        cos_sin = cos_sin.contiguous()
    device = _device(q, "q")
    check_device(device, k=k, v=v, k_cache=k_cache, v_cache=v_cache, positions=positions,
                 slot_mapping=slot_mapping)
    positions, slot_mapping = positions.to(torch.int64).contiguous(), slot_mapping.to(torch.int64).contiguous()
    if num_tokens == 0:
        return
    _rotary_store_kv_kernel[(num_tokens,)](
        q, k, v, positions, cos_sin if rotary_dim > 0 else q, k_cache, v_cache, slot_mapping,
        num_heads, num_kv_heads, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        HEAD_DIM=head_dim, ROTARY_DIM=rotary_dim, INTERLEAVED=bool(interleaved),
        BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_KVH=triton.next_power_of_2(num_kv_heads),
        BLOCK_R=max(triton.next_power_of_2(rotary_dim // 2), 1), BLOCK_D=triton.next_power_of_2(head_dim))


@triton.jit
def _paged_attention_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, cu_seqlens_ptr,
                            out_ptr, scale, stride_qt, stride_qh, stride_bt, num_kv_heads, heads_per_kv,
                            HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, WINDOW: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            IEEE: tl.constexpr):
    # Program (m, b, h): query rows [m * BLOCK_M, (m + 1) * BLOCK_M) of sequence b, head h.
    # Its rows are q[cu[b] + r], at positions seq_len - q_len + r; row r sees keys j with
    # j <= pos_r (and j > pos_r - WINDOW when WINDOW > 0). Keys come in tiles of BLOCK_N consecutive
    # positions; key j lives in cache block block_tables[b, j // BLOCK_SIZE] at offset j % BLOCK_SIZE,
    # i.e. flat cache row (block * BLOCK_SIZE + offset) of [num_slots, num_kv_heads, HEAD_DIM].
    # Online softmax in fp32: running max m_i, sum l_i and output acc per query row.
    m_tile, b, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start = tl.load(cu_seqlens_ptr + b)
    q_len = tl.load(cu_seqlens_ptr + b + 1) - q_start
    if m_tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    pos = seq_len - q_len + rows  # [BLOCK_M]
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q_rows = (q_start + rows).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if IEEE:  # any fp32 operand: fp32 dots, as the reference does
        q = q.to(tl.float32)
    # Visible key range of the whole tile; the window skips every key (hence block) before key_lo.
    key_hi = seq_len - q_len + tl.minimum((m_tile + 1) * BLOCK_M, q_len)
    key_lo = 0
    if WINDOW > 0:
        key_lo = tl.maximum(seq_len - q_len + m_tile * BLOCK_M - WINDOW + 1, 0)
    kv_col = (h // heads_per_kv) * HEAD_DIM + d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(key_lo, key_hi, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_mask = keys < key_hi
        block = tl.load(block_tables_ptr + b * stride_bt + keys // BLOCK_SIZE, mask=key_mask, other=0)
        slot = block.to(tl.int64) * BLOCK_SIZE + keys % BLOCK_SIZE
        kv_offs = slot[:, None] * (num_kv_heads * HEAD_DIM) + kv_col  # [BLOCK_N, BLOCK_D]
        kv_mask = key_mask[:, None] & d_mask[None, :]
        k = _cast(tl.load(k_cache_ptr + kv_offs, mask=kv_mask, other=0.0), q.dtype)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * scale
        visible = (keys[None, :] <= pos[:, None]) & key_mask[None, :]
        if WINDOW > 0:
            visible = visible & (keys[None, :] > pos[:, None] - WINDOW)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _cast(tl.load(v_cache_ptr + kv_offs, mask=kv_mask, other=0.0), q.dtype)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(_cast(p, v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows (never stored) have l = 0
    # out is dense [num_tokens, num_heads, HEAD_DIM]; grid axis 2 has num_heads programs.
    out_offs = q_rows[:, None] * (tl.num_programs(2) * HEAD_DIM) + h * HEAD_DIM + d[None, :]
    tl.store(out_ptr + out_offs, _cast(out, out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & d_mask[None, :])


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, scale: float, window: int = 0,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Varlen causal attention of new query rows over the paged cache (prefill chunks and decode).

    q: [num_tokens, num_heads, head_dim] (a view with a dense last dim is fine); caches: contiguous
    [num_blocks, block_size, num_kv_heads, head_dim]; block_tables: [num_seqs, max_blocks] int;
    seq_lens: [num_seqs] int; cu_seqlens_q: [num_seqs + 1] int. window > 0: a query at position i sees
    keys j with i - window < j <= i. Returns contiguous [num_tokens, num_heads, head_dim] in q's dtype.
    Scores, softmax and accumulation are fp32 (fp32 inputs use IEEE fp32 dots, not TF32).
    """
    _check_dtype(q, "q")
    check_attention_args(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, window)
    _check_float_cache(k_cache, k_scale, v_scale)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, num_seqs = k_cache.shape[2], block_tables.shape[0]
    device = _device(q, "q")
    check_device(device, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens,
                 cu_seqlens_q=cu_seqlens_q)
    block_tables = block_tables.to(torch.int32).contiguous()
    seq_lens, cu_seqlens_q = seq_lens.to(torch.int32).contiguous(), cu_seqlens_q.to(torch.int32).contiguous()
    out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype, device=device)
    if num_tokens == 0 or num_seqs == 0:
        return out
    block_m = 16  # tl.dot's minimum tile; decode rows use one row of it
    # Query tiles of the longest sequence; one host sync, skipped when every row fits in one tile.
    max_q_len = num_tokens if num_tokens <= block_m else int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    # fp32 dots when any operand is fp32; also in the interpreter, whose tl.dot mishandles bf16.
    ieee = INTERPRETED or q.dtype == torch.float32 or k_cache.dtype == torch.float32
    grid = (triton.cdiv(max_q_len, block_m), num_seqs, num_heads)
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, out, float(scale),
        q.stride(0), q.stride(1), block_tables.stride(0), num_kv_heads, num_heads // num_kv_heads,
        HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1], WINDOW=int(window), BLOCK_M=block_m,
        BLOCK_N=32, BLOCK_D=max(triton.next_power_of_2(head_dim), 16), IEEE=ieee)
    return out


bind_rotary_store_kv, bind_paged_attention = closure_binders(rotary_store_kv, paged_attention)
# The sampler's row reductions: on a GPU, torch's own reductions are the kernel.
from .reference import argmax_logsumexp  # noqa: E402
