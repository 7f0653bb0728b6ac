"""Attention metadata of one step, the paged attention layer that calls the backend ops, and the
self-attention block (packed q/k/v projection, paged attention, output projection).

A backend is a module with the three ops of kernels.reference (gated_embedding, rotary_store_kv,
paged_attention): kernels.reference ("torch"), kernels.cpu ("cpu") or kernels.triton ("triton")."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from .linear import project


@dataclass
class AttentionMetadata:
    """Flat batch of one step, built once by the ModelRunner and passed down explicitly.

    Sequence b contributes query rows cu_seqlens_q[b]:cu_seqlens_q[b+1] (its new tokens):

        |<---------------- seq_lens[b] ---------------->|
        |<-- context (already in the KV cache) -->|<-- q_len_b -->|   (prefill chunk: q_len_b > 1,
                                                                        decode: q_len_b == 1)
    """
    positions: torch.Tensor     # [num_tokens] int64
    slot_mapping: torch.Tensor  # [num_tokens] int64, block * block_size + offset; -1 = skip
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor      # [num_seqs] int32
    cu_seqlens_q: torch.Tensor  # [num_seqs + 1] int32
    # The rows whose last-layer output is needed (each sampling sequence's last row, and the rows
    # of prompt logprobs), when that is fewer than all: the last layer stores every row's K and V
    # but runs attention, the output projection and the MLP on these rows only (a prefill chunk
    # samples one row in ~100s). A sequence's kept rows are the last of its chunk.
    last_rows: torch.Tensor | None = None         # [num_kept] int64, ascending
    last_cu_seqlens_q: torch.Tensor | None = None  # [num_seqs + 1] int32: kept rows per sequence


class PagedAttention(nn.Module):
    """Rotary + KV-cache write, then varlen attention over the paged cache, through `ops`."""

    def __init__(self, ops: ModuleType, num_heads: int, head_dim: int, scale: float,
                 window: int = 0, rotary_dim: int = 0, interleaved: bool = True):
        super().__init__()
        self.ops = ops
        self.num_heads, self.head_dim = num_heads, head_dim
        self.scale, self.window = scale, window
        self.rotary_dim, self.interleaved = rotary_dim, interleaved
        self.k_cache: torch.Tensor | None = None  # [num_blocks, block_size, num_heads, head_dim]
        self.v_cache: torch.Tensor | None = None
        self.k_scale: torch.Tensor | None = None  # int8 cache: [num_blocks, block_size, num_heads]
        self.v_scale: torch.Tensor | None = None
        # The backend's two ops bound to this layer's cache and constants (see bind_cache).
        self._store_kv = self._attend = self._bound_cos_sin = None

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale: torch.Tensor | None = None,
                   v_scale: torch.Tensor | None = None) -> None:
        """This layer's views of the KV cache (and of an int8 cache's scales)."""
        self.k_cache, self.v_cache, self.k_scale, self.v_scale = k_cache, v_cache, k_scale, v_scale
        self._store_kv = self._attend = self._bound_cos_sin = None

    def _bind(self, cos_sin: torch.Tensor | None) -> None:
        # Once per cache (and rotary table): the C++ backend checks these operands here, not per step.
        scales = {"k_scale": self.k_scale, "v_scale": self.v_scale}
        self._store_kv = self.ops.bind_rotary_store_kv(cos_sin, self.rotary_dim, self.interleaved, self.k_cache,
                                                       self.v_cache, **scales)
        self._attend = self.ops.bind_paged_attention(self.k_cache, self.v_cache, self.scale, self.window, **scales)
        self._bound_cos_sin = cos_sin

    def bound_ops(self, cos_sin: torch.Tensor | None):
        """(store_kv, attend): the backend's two ops bound to this layer's cache and cos_sin."""
        if self._store_kv is None or cos_sin is not self._bound_cos_sin:
            self._bind(cos_sin)
        return self._store_kv, self._attend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
                cos_sin: torch.Tensor | None, last: bool = False) -> torch.Tensor:
        """q, k, v: [num_tokens, num_heads, head_dim], dense last dim (views of the fused qkv are
        fine), rotated in place. last: attend from meta.last_rows only (every row's K, V stored)."""
        if self._store_kv is None or cos_sin is not self._bound_cos_sin:
            self._bind(cos_sin)
        self._store_kv(q, k, v, meta.positions, meta.slot_mapping)
        cu_seqlens_q = meta.cu_seqlens_q
        if last:
            q, cu_seqlens_q = q[meta.last_rows], meta.last_cu_seqlens_q
        return self._attend(q, meta.block_tables, meta.seq_lens, cu_seqlens_q)


class SelfAttention(nn.Module):
    """Packed q, k, v projection ([3 * hidden, hidden], rows q then k then v), paged attention,
    output projection."""

    def __init__(self, ops, hidden: int, num_heads: int, scale: float, window: int,
                 rotary_dim: int, interleaved: bool, qkv_bias: bool, out_bias: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden // num_heads
        self.qkv_proj = nn.Linear(hidden, 3 * hidden, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden, hidden, bias=out_bias)
        self.attn = PagedAttention(ops, num_heads, self.head_dim, scale, window, rotary_dim,
                                   interleaved)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, cos_sin: torch.Tensor | None,
                norm: nn.Module | None = None, residual: torch.Tensor | None = None,
                last: bool = False) -> torch.Tensor:
        """residual + out_proj(attention(qkv_proj(norm(x)))); last: see attend."""
        return self.attend(project(self.qkv_proj, x, norm), meta, cos_sin, residual, last)

    def attend(self, qkv: torch.Tensor, meta: AttentionMetadata, cos_sin: torch.Tensor | None,
               residual: torch.Tensor | None = None, last: bool = False) -> torch.Tensor:
        """qkv: [num_tokens, 3 * hidden] (rows may be strided) -> residual + out_proj(attention).
        last: only the rows meta.last_rows come out (residual: those rows already)."""
        qkv = qkv.unflatten(1, (3, self.num_heads, self.head_dim))
        # Strided views of qkv, [num_tokens, heads, head_dim] each: the ops take a dense last dim.
        q, k, v = qkv.unbind(1)
        out = self.attn(q, k, v, meta, cos_sin, last)
        return project(self.out_proj, out.flatten(1), residual=residual)
