"""Layers shared by the model files: activations, the MLP, and the packed q/k/v projection."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionMetadata, PagedAttention


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU (transformers' "gelu_new")."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu_new": gelu_new, "gelu": F.gelu, "gelu_fast": gelu_new, "relu": F.relu}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation_function {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str):
        super().__init__()
        self.fc_in = nn.Linear(hidden, inner)
        self.fc_out = nn.Linear(inner, hidden)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


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

    def forward(self, x: torch.Tensor, meta: AttentionMetadata,
                cos_sin: torch.Tensor | None) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x).view(num_tokens, 3, self.num_heads, self.head_dim)
        # Strided views of qkv, [num_tokens, heads, head_dim] each: the ops take a dense last dim.
        q, k, v = qkv.unbind(1)
        out = self.attn(q, k, v, meta, cos_sin)
        return self.out_proj(out.view(num_tokens, -1))
