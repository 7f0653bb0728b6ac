"""bf16 models on the CPU run every linear through the packed C++ GEMM (engine/models/bf16.py):
CodeGen's qkv_proj and fc_in become one GEMM, the logits are fp32, and since each output's sum runs
over k in a fixed order whatever the number of rows, batched greedy decoding gives the tokens of
one-at-a-time decoding."""
import pytest
import torch
from torch import nn

from engine import LLM, SamplingParams
from engine.models.bf16 import Bf16Linear


def test_bf16_packs_and_merges_codegen_projections(tiny_codegen_dir):
    llm = LLM(model=str(tiny_codegen_dir), dtype="bfloat16", num_kv_blocks=64)
    model = llm.engine.runner.model
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert all(isinstance(layer.in_proj, Bf16Linear) and layer.attn.qkv_proj is None for layer in model.layers)
    assert model.lm_head.out_dtype == torch.float32
    outs = llm.generate(["def add(a, b):"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                        use_tqdm=False)
    assert len(outs[0].outputs[0].token_ids) == 8


@pytest.mark.parametrize("which", ["codegen", "gptneo"])
def test_bf16_batched_equals_single(tiny_codegen_dir, tiny_gptneo_dir, which):
    model = tiny_codegen_dir if which == "codegen" else tiny_gptneo_dir
    llm = LLM(model=str(model), dtype="bfloat16", num_kv_blocks=256, enable_prefix_caching=False)
    gen = torch.Generator().manual_seed(5)
    prompts = [{"prompt_token_ids": torch.randint(0, 200, (n,), generator=gen).tolist()}
               for n in (5, 17, 40, 3, 64, 23)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    batched = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    single = [llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    assert batched == single
