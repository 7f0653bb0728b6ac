"""Bound forms of the attention ops for backends that take every operand per call (the torch
reference, Triton): the C++ backend's bind_* check a layer's fixed operands once instead."""
from __future__ import annotations


def closure_binders(rotary_store_kv, paged_attention):
    """(bind_rotary_store_kv, bind_paged_attention) over a backend's two ops, with kernels.cpu's
    signatures: bind(layer's fixed operands) -> f(one call's rows)."""

    def bind_rotary_store_kv(cos_sin, rotary_dim, interleaved, k_cache, v_cache, k_scale=None, v_scale=None):
        def store(q, k, v, positions, slot_mapping):
            rotary_store_kv(q, k, v, positions, cos_sin, rotary_dim, interleaved, k_cache, v_cache, slot_mapping,
                            k_scale, v_scale)
        return store

    def bind_paged_attention(k_cache, v_cache, scale, window=0, k_scale=None, v_scale=None):
        def attend(q, block_tables, seq_lens, cu_seqlens_q):
            return paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, window,
                                   k_scale, v_scale)
        return attend

    return bind_rotary_store_kv, bind_paged_attention
