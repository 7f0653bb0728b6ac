"""int8 weights for dtype="int8": every nn.Linear of a loaded model (tied embeddings excepted) is
swapped for an Int8Linear holding per-output-channel symmetric int8 weights and fp32 scales, while
activations, norms, embeddings and the KV cache stay bfloat16.

Which matmul runs depends on the number of rows M (the tokens of the step), because each torch CPU
kernel wins in its own range on this hardware:
    M <= INT_MM_M  decode: fbgemm's prepacked dynamic int8 linear (quantized.linear_dynamic: the
                   activations quantized per tensor to uint8, VNNI int8 GEMM, fp32 out; measured
                   13-35% faster per decode step than the two paths below at 1-32 requests).
                   Without fbgemm: aten._weight_int8pack_mm (weight-only) up to SMALL_M rows, then
                   aten._int_mm on per-row int8 activations.
    larger         prefill: the int8 weight dequantized to bf16 once per call, then the bf16 GEMM
                   (compute-bound; the dequantization costs ~2% there).
Teacher-forced agreement with fp32 of each path: README, Performance."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

SMALL_M = 16
INT_MM_M = 192
HAS_FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], fp32 scales [out]) with weight ~= q * scale[:, None]."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_per_channel(linear.weight)
        act_dtype = linear.weight.dtype
        self.register_buffer("qweight", q)                        # [out, in] int8
        self.register_buffer("scale", scale)                      # [out] fp32
        self.register_buffer("scale_act", scale.to(act_dtype))    # [out] in the activation dtype
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.packed = None  # fbgemm's prepacked copy of qweight (+ fp32 bias) for decode rows
        if HAS_FBGEMM and q.device.type == "cpu":
            zero_points = torch.zeros(self.out_features, dtype=torch.int64)
            with warnings.catch_warnings():  # quantized tensors are deprecated: see the aten fallback
                warnings.simplefilter("ignore", UserWarning)
                qt = torch._make_per_channel_quantized_tensor(q, scale.double(), zero_points, 0)
            bias = None if self.bias is None else self.bias.float()
            self.packed = torch.ops.quantized.linear_prepack(qt, bias)

    def forward_post_op(self, x: torch.Tensor, post_op: tuple[str, str], act) -> torch.Tensor:
        """act(self(x)); on the dequantized (prefill) path act is a oneDNN post-op of the GEMM.
        x: [rows, in] bf16 on the CPU; post_op: (attr, algorithm) of mkldnn._linear_pointwise."""
        if x.dim() == 2 and x.shape[0] > INT_MM_M:
            weight = self.qweight.to(x.dtype) * self.scale_act[:, None]
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, post_op[0], [], post_op[1])
        return act(self(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        rows = x.shape[0]
        if rows <= INT_MM_M and self.packed is not None:  # bias included in the packed weight
            # reduce_range=False: full 8-bit activations (VNNI has no int16 saturation to avoid).
            y = torch.ops.quantized.linear_dynamic(x.float(), self.packed, False).to(x.dtype)
            return y.view(*shape[:-1], self.out_features)
        if rows <= SMALL_M and x.dtype == self.scale_act.dtype:
            y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.qweight, self.scale_act)
        elif rows <= INT_MM_M:  # int8pack wins up to SMALL_M rows, _int_mm above
            x_scale = x.abs().amax(dim=1, keepdim=True).float().clamp_min_(1e-12) / 127.0  # [M, 1]
            xq = torch.round(x / x_scale).to(torch.int8)
            y = (torch._int_mm(xq, self.qweight.t()) * (x_scale * self.scale)).to(x.dtype)
        else:
            weight = self.qweight.to(x.dtype) * self.scale_act[:, None]
            y = F.linear(x, weight)
        if self.bias is not None:
            y += self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear whose weight is not shared with an embedding by an Int8Linear."""
    embeddings = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.weight.data_ptr() not in embeddings:
                setattr(parent, name, Int8Linear(child))
    return model
