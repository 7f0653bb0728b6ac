"""bf16 models on the CPU run every linear through the packed C++ GEMM (engine/layers/bf16.py):
CodeGen's qkv_proj and fc_in become one GEMM and the logits are fp32 (batched == single greedy:
tests/layers/test_quant.py, test_packed_batched_equals_single)."""
import torch
from torch import nn

from engine import LLM, SamplingParams
from engine.layers.bf16 import Bf16Linear


def test_bf16_packs_and_merges_codegen_projections(tiny_codegen_dir):
    llm = LLM(model=str(tiny_codegen_dir), dtype="bfloat16", num_kv_blocks=64)
    model = llm.engine.runner.model
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert all(isinstance(layer.in_proj, Bf16Linear) and layer.attn.qkv_proj is None for layer in model.layers)
    assert model.lm_head.out_dtype == torch.float32
    outs = llm.generate(["def add(a, b):"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                        use_tqdm=False)
    assert len(outs[0].outputs[0].token_ids) == 8
