"""Projections the model files share: activations, `project` (a linear with its norm, activation and
residual fused where a kernel can), fp32 logits, and the MLP."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bf16 import Bf16Linear
from .int4 import Int4Linear
from .quant import Int8Linear



def embedding(num: int, dim: int) -> nn.Embedding:
    """An nn.Embedding without the random init: the checkpoint fills it. On the meta device (where the
    models are built) torch's normal_ runs through its Python refs, whose first use imports
    torch._dynamo: seconds of start-up for nothing."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))

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
# (a separate bf16 gelu would be another pass over the fc_in output).
ONEDNN_POST_OPS = {"gelu_new": ("gelu", "tanh"), "gelu_fast": ("gelu", "tanh"),
                   "gelu": ("gelu", "none")}
# oneDNN runs bf16 inner products only on CPUs with AVX-512 (or AMX); on AVX2 it cannot create one.
HAS_LINEAR_POINTWISE = (torch.backends.mkldnn.is_available()
                        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                        and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Activations the epilogue of the packed CPU linears computes (Int8Linear, Bf16Linear): GPT-2's tanh gelu.
FUSED_ACTS = {"gelu_new", "gelu_fast"}
PACKED_LINEARS = (Int8Linear, Bf16Linear, Int4Linear)


def project(linear: nn.Module, x: torch.Tensor, norm: nn.Module | None = None, act: str | None = None,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """residual + act(linear(norm(x))), each part optional. The packed CPU linears (Int8Linear of
    dtype int8, Bf16Linear of bf16 models) fuse the norm into their input pass and the tanh gelu and
    residual into their epilogue; a plain bf16 linear on the CPU fuses the activation into the oneDNN
    GEMM; fp32 keeps the unfused ops, so fp32 outputs match transformers exactly."""
    if isinstance(linear, PACKED_LINEARS):
        fused = act is None or act in FUSED_ACTS
        # forward, not __call__: these modules take no hooks, and __call__'s overhead runs per linear per step
        y = linear.forward(x, norm=norm, act_start=0 if act is not None and fused else None,
                           residual=residual if fused else None)
        return y if fused else residual_add(activation(act)(y), residual)
    h = x if norm is None else norm(x)
    post_op = ONEDNN_POST_OPS.get(act)
    if post_op and HAS_LINEAR_POINTWISE and h.dtype == torch.bfloat16 and h.device.type == "cpu":
        y = torch.ops.mkldnn._linear_pointwise(h, linear.weight, linear.bias, post_op[0], [], post_op[1])
    else:
        y = linear(h) if act is None else activation(act)(linear(h))
    return residual_add(y, residual)


def residual_add(y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    return y if residual is None else residual + y


def logits_fp32(lm_head: nn.Module, norm: nn.Module, hidden: torch.Tensor, refine: int = 8) -> torch.Tensor:
    """[rows, hidden] -> fp32 logits of lm_head(norm(hidden)). A bf16 GEMM rounds its outputs to bf16
    (~0.4% apart, which flips near-tied argmaxes; README, Performance, has the agreement), so each
    row's `refine` largest logits are recomputed in fp32 from the same bf16 operands. A packed head (Int8Linear, Bf16Linear) writes fp32 itself; fp32 heads are exact already."""
    if isinstance(lm_head, PACKED_LINEARS):
        return project(lm_head, hidden, norm=norm).float()
    h = norm(hidden)
    logits = lm_head(h)
    if logits.dtype == torch.float32:
        return logits
    logits = logits.float()
    top = logits.topk(min(refine, logits.shape[1]), dim=-1).indices      # [rows, refine]
    exact = torch.einsum("rkh,rh->rk", lm_head.weight[top].float(), h.float())
    if lm_head.bias is not None:
        exact += lm_head.bias[top].float()
    return logits.scatter_(1, top, exact)


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str):
        super().__init__()
        self.fc_in = nn.Linear(hidden, inner)
        self.fc_out = nn.Linear(inner, hidden)
        self.act_name = act
        activation(act)  # ValueError now for an unsupported activation

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """residual + fc_out(act(fc_in(norm(x))))."""
        return project(self.fc_out, project(self.fc_in, x, norm, self.act_name), residual=residual)
