"""Whole-model parity with transformers on tiny random checkpoints (the oracle)."""
import pytest
import torch

from engine import LLM, SamplingParams
from tests.checkpoints import hf_greedy, hf_model

PROMPTS = [
    "d",
    "def add(a, b):",
    "import os\nimport sys\n\nfor i in range(10):\n    print(i)\n" * 3,  # longer than the window
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
]


@pytest.mark.parametrize("arch", ["codegen", "gptneo"])
def test_greedy_tokens_match_transformers(arch, tiny_codegen_dir, tiny_gptneo_dir):
    path = tiny_codegen_dir if arch == "codegen" else tiny_gptneo_dir
    llm = LLM(str(path), dtype="float32", attention_backend="torch")
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    outs = llm.generate(PROMPTS, params)  # all prompts in one call: batched, paged
    ref_model = hf_model(path)
    sample_vocab = len(tok)
    for prompt, out in zip(PROMPTS, outs):
        ids = tok.encode(prompt)
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == hf_greedy(ref_model, ids, 40, sample_vocab), prompt
        assert out.outputs[0].finish_reason == "length"


@pytest.mark.parametrize("arch", ["codegen", "gptneo"])
def test_logprobs_match_transformers(arch, tiny_codegen_dir, tiny_gptneo_dir):
    path = tiny_codegen_dir if arch == "codegen" else tiny_gptneo_dir
    llm = LLM(str(path), dtype="float32", attention_backend="torch")
    tok = llm.get_tokenizer()
    prompt = PROMPTS[2]
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1, logprobs=5))[0]
    ids = tok.encode(prompt)
    with torch.no_grad():
        logits = hf_model(path)(torch.tensor([ids])).logits[0, -1, :len(tok)]
    ref = logits.log_softmax(-1)
    got = out.outputs[0].logprobs[0]
    assert len(got) == 5
    for token_id, logprob in got.items():
        assert abs(logprob - ref[token_id].item()) < 1e-4, (token_id, logprob, ref[token_id].item())
    assert set(got) == set(ref.topk(5).indices.tolist())


def test_codegen_never_samples_padding_ids(tiny_codegen_dir):
    llm = LLM(str(tiny_codegen_dir), dtype="float32", attention_backend="torch")
    assert llm.engine.config.vocab_size > len(llm.get_tokenizer())
    params = SamplingParams(temperature=5.0, max_tokens=64, ignore_eos=True, seed=1)
    out = llm.generate(["def"] * 4, params)
    assert all(t < len(llm.get_tokenizer()) for o in out for t in o.outputs[0].token_ids)


def test_bfloat16_runs_and_mostly_agrees(tiny_codegen_dir):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    ref = LLM(str(tiny_codegen_dir), dtype="float32", attention_backend="torch")
    bf = LLM(str(tiny_codegen_dir), dtype="bfloat16", attention_backend="torch")
    a = ref.generate(PROMPTS[1], params)[0].outputs[0].token_ids
    b = bf.generate(PROMPTS[1], params)[0].outputs[0].token_ids
    assert a[0] == b[0]
