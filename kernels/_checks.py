"""Argument checks shared by the C++ and Triton wrappers: each error names the bad argument.

The wrappers run these on every call (a decode step makes a few per layer), so each rule is one
comparison when it passes and builds its message only when it fails."""
from __future__ import annotations

import torch


def check_head_dim(q: torch.Tensor, head_dim: int) -> None:
    """q: [tokens, heads, head_dim] with the cache's head_dim."""
    check_shape(q, "q", (None, None, None))
    if q.shape[2] != head_dim:
        raise ValueError(f"q: head_dim {q.shape[2]} differs from the k_cache's {head_dim}")


def check_shape(t: torch.Tensor, name: str, shape: tuple) -> None:
    """shape entries of None match any size."""
    actual = t.shape
    if actual == shape or (len(actual) == len(shape)
                           and all(s is None or s == d for s, d in zip(shape, actual))):
        return
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    raise ValueError(f"{name}: expected shape {want}, got {list(actual)}")


def check_device(device: torch.device, **tensors: torch.Tensor) -> None:
    """Every tensor on `device` (the first operand's device for Triton, cpu for the C++ ops)."""
    for name, t in tensors.items():
        if t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")


def check_rows(t: torch.Tensor, name: str) -> None:
    # [tokens, heads, head_dim] views (e.g. slices of a fused qkv output) are fine if head_dim is dense.
    if t.stride(2) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous, got strides {t.stride()}")


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 4 or not cache.is_contiguous():
            raise ValueError(f"{name}: must be contiguous [num_blocks, block_size, kv_heads, head_dim], "
                             f"got shape {list(cache.shape)} strides {cache.stride()}")
    check_shape(v_cache, "v_cache", k_cache.shape)
    if v_cache.dtype != k_cache.dtype:
        raise TypeError(f"v_cache dtype {v_cache.dtype} differs from k_cache dtype {k_cache.dtype}")


def check_embedding_shapes(ids, modality, remap, wte, wpe, positions) -> None:
    """ids, modality, positions: [num_tokens]; remap: [vocab]; wte: [vocab, hidden]; wpe: [*, hidden]."""
    check_shape(ids, "ids", (None,))
    for name, t in (("modality", modality), ("positions", positions)):
        check_shape(t, name, (ids.shape[0],))
    check_shape(wte, "wte", (None, None))
    check_shape(remap, "remap", (wte.shape[0],))
    if wpe is not None:
        check_shape(wpe, "wpe", (None, wte.shape[1]))


def check_rotary_table(cos_sin, rotary_dim: int, head_dim: int) -> None:
    """rotary_store_kv's fixed operands beside the cache: the rotated width and its cos/sin table."""
    if rotary_dim < 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim: must be even and in [0, head_dim={head_dim}], got {rotary_dim}")
    if rotary_dim > 0:
        if cos_sin is None or cos_sin.dtype != torch.float32 or cos_sin.dim() != 2:
            raise TypeError("cos_sin: expected a float32 [max_positions, rotary_dim] table")
        check_shape(cos_sin, "cos_sin", (cos_sin.shape[0], rotary_dim))


def check_rotary_rows(q, k, v, positions, slot_mapping, num_kv_heads: int, head_dim: int) -> None:
    """rotary_store_kv's per-call operands against a cache of num_kv_heads x head_dim."""
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} dtype {t.dtype} differs from q dtype {q.dtype}")
    check_head_dim(q, head_dim)
    num_tokens = q.shape[0]
    check_shape(k, "k", (num_tokens, num_kv_heads, head_dim))
    check_shape(v, "v", (num_tokens, num_kv_heads, head_dim))
    check_shape(positions, "positions", (num_tokens,))
    check_shape(slot_mapping, "slot_mapping", (num_tokens,))
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_rows(t, name)


def check_rotary_args(q, k, v, positions, cos_sin, rotary_dim, k_cache, v_cache, slot_mapping) -> None:
    """Shapes and dtypes of rotary_store_kv's arguments that every backend requires (TypeError /
    ValueError naming the argument); dtype support and devices are each backend's own checks."""
    check_cache(k_cache, v_cache)
    check_rotary_table(cos_sin, rotary_dim, k_cache.shape[3])
    check_rotary_rows(q, k, v, positions, slot_mapping, k_cache.shape[2], k_cache.shape[3])


def check_window(window: int) -> None:
    if window < 0:
        raise ValueError(f"window: must be >= 0, got {window}")


def check_attention_rows(q, block_tables, seq_lens, cu_seqlens_q, num_kv_heads: int, head_dim: int) -> None:
    """paged_attention's per-call operands against a cache of num_kv_heads x head_dim."""
    check_head_dim(q, head_dim)
    check_rows(q, "q")
    if num_kv_heads == 0 or q.shape[1] % num_kv_heads:
        raise ValueError(f"q: num_heads={q.shape[1]} is not a multiple of num_kv_heads={num_kv_heads}")
    check_sequences(block_tables, seq_lens, cu_seqlens_q)


def check_sequences(block_tables, seq_lens, cu_seqlens_q) -> None:
    """A step's per-sequence metadata: block_tables [num_seqs, max_blocks], seq_lens [num_seqs],
    cu_seqlens_q [num_seqs + 1]."""
    if block_tables.dim() != 2:
        raise ValueError(f"block_tables: expected shape [num_seqs, max_blocks], got {list(block_tables.shape)}")
    num_seqs = block_tables.shape[0]
    check_shape(seq_lens, "seq_lens", (num_seqs,))
    check_shape(cu_seqlens_q, "cu_seqlens_q", (num_seqs + 1,))


def check_attention_args(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, window) -> None:
    """Shapes of paged_attention's arguments that every backend requires (ValueError naming the
    argument); dtype support and devices are each backend's own checks."""
    check_cache(k_cache, v_cache)
    check_window(window)
    check_attention_rows(q, block_tables, seq_lens, cu_seqlens_q, k_cache.shape[2], k_cache.shape[3])


def check_cache_scales(k_cache, v_cache, k_scale, v_scale) -> None:
    """An int8 cache comes with fp32 scales, one per (block, slot, kv head), contiguous
    [num_blocks, block_size, num_kv_heads]; a float cache takes none."""
    if k_cache.dtype != torch.int8:
        if k_scale is not None or v_scale is not None:
            raise ValueError(f"k_scale, v_scale: only an int8 cache has scales, the cache is {k_cache.dtype}")
        return
    for name, t in (("k_scale", k_scale), ("v_scale", v_scale)):
        if t is None:
            raise ValueError(f"{name}: an int8 cache needs its per-row scales")
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device != k_cache.device:
            raise TypeError(f"{name}: expected a contiguous float32 tensor on {k_cache.device}")
        check_shape(t, name, k_cache.shape[:3])


def int4_group_size(packed: torch.Tensor, params: torch.Tensor | None, n: int) -> int:
    """The group size of int4 weights, from the shapes of packed and its fp16 params [P, groups, 2, 16]."""
    if params is None or params.dim() != 4 or params.shape[0] != -(-n // 16) or params.shape[2:] != (2, 16) \
            or params.dtype != torch.float16 or not params.is_contiguous() or packed.dim() != 4:
        raise ValueError(f"params: expected a contiguous float16 [{-(-n // 16)}, groups, 2, 16] tensor "
                         f"(pack_int4_weight), got {None if params is None else (list(params.shape), params.dtype)}")
    group_size = packed.shape[1] * 8 // max(params.shape[1], 1)
    if group_size <= 0 or group_size % 32:
        raise ValueError(f"params: {params.shape[1]} groups do not split packed's {packed.shape[1] * 8} inputs "
                         f"into groups of a multiple of 32")
    return group_size
