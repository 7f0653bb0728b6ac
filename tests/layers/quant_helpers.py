"""Checks the quantised-linear tests share (int8 and int4): relative error against the float math,
the fused layer norm + gelu + residual case, batched against one-at-a-time greedy decoding."""
import torch
import torch.nn.functional as F
from torch import nn

from engine import SamplingParams


def relative_error(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()


def norm_gelu_residual_case(rows):
    """A bf16 Linear(64, 96) behind a LayerNorm, its input and residual, and the float math:
    (linear, norm, x, residual, y = linear(norm(x)), ref = residual + y with tanh gelu from column 40)."""
    linear = nn.Linear(64, 96).to(torch.bfloat16)
    norm = nn.LayerNorm(64).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2), norm.bias.normal_(0.0, 0.2)
    x = (torch.randn(rows, 64) * 4 + 1).to(torch.bfloat16)
    residual = torch.randn(rows, 96).to(torch.bfloat16)
    h = F.layer_norm(x.float(), (64,), norm.weight.float(), norm.bias.float())
    y = F.linear(h, linear.weight.float(), linear.bias.float())
    ref = residual.float() + torch.cat([y[:, :40], F.gelu(y[:, 40:], approximate="tanh")], dim=1)
    return linear, norm, x, residual, y, ref


def assert_batched_equals_single(llm):
    """Greedy tokens of six random prompts of odd lengths, all at once and one at a time, agree."""
    gen = torch.Generator().manual_seed(3)
    prompts = [{"prompt_token_ids": torch.randint(0, 200, (n,), generator=gen).tolist()}
               for n in (5, 17, 40, 3, 64, 23)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    batched = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    single = [llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    assert batched == single
