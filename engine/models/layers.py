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


# Activations oneDNN applies as a post-op of the bf16 CPU GEMM, (attr, algorithm) of
# mkldnn._linear_pointwise: one pass over the output, the activation computed in fp32 before rounding
# (a separate bf16 gelu costs ~20% of the fc_in GEMM in prefill).
ONEDNN_POST_OPS = {"gelu_new": ("gelu", "tanh"), "gelu_fast": ("gelu", "tanh"),
                   "gelu": ("gelu", "none")}
HAS_LINEAR_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                        "_linear_pointwise")


def linear_act(linear: nn.Module, x: torch.Tensor, act_name: str) -> torch.Tensor:
    """activation(linear(x)), fused into the GEMM for bf16 on the CPU (fp32 keeps the unfused ops,
    so fp32 outputs match transformers exactly)."""
    post_op = ONEDNN_POST_OPS.get(act_name)
    if post_op and HAS_LINEAR_POINTWISE and x.dtype == torch.bfloat16 and x.device.type == "cpu":
        if type(linear) is nn.Linear:
            return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, post_op[0], [],
                                                      post_op[1])
        if hasattr(linear, "forward_post_op"):  # engine.models.quant.Int8Linear
            return linear.forward_post_op(x, post_op, activation(act_name))
    return activation(act_name)(linear(x))


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str):
        super().__init__()
        self.fc_in = nn.Linear(hidden, inner)
        self.fc_out = nn.Linear(inner, hidden)
        self.act_name = act
        activation(act)  # ValueError now for an unsupported activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(linear_act(self.fc_in, x, self.act_name))


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
