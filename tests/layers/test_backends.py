"""Whole-model greedy tokens are identical through every attention backend: the torch reference,
the C++ CPU kernels and the Triton kernels (under the interpreter here)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels.triton is first imported

import pytest  # noqa: E402

from engine import LLM, SamplingParams  # noqa: E402
from engine.worker.model_runner import select_ops  # noqa: E402

PROMPTS = ["def add(a, b):", "import os\nimport sys\n\nfor i in range(10):\n    print(i)\n" * 2]


def tokens(path, backend, dtype="float32", max_tokens=24, prompts=PROMPTS):
    llm = LLM(str(path), dtype=dtype, attention_backend=backend, block_size=8)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


@pytest.mark.parametrize("arch", ["codegen", "gptneo"])
def test_cpu_backend_matches_reference(arch, tiny_codegen_dir, tiny_gptneo_dir):
    path = tiny_codegen_dir if arch == "codegen" else tiny_gptneo_dir
    assert tokens(path, "cpu") == tokens(path, "torch")
    assert tokens(path, "cpu", "bfloat16") == tokens(path, "torch", "bfloat16")


@pytest.mark.parametrize("arch", ["codegen", "gptneo"])
def test_triton_backend_matches_reference(arch, tiny_codegen_dir, tiny_gptneo_dir):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    path = tiny_codegen_dir if arch == "codegen" else tiny_gptneo_dir
    prompts = [PROMPTS[0], PROMPTS[1][:70]]
    assert tokens(path, "triton", max_tokens=6, prompts=prompts) == tokens(path, "torch", max_tokens=6, prompts=prompts)


def test_backend_selection_errors(monkeypatch):
    import torch

    import kernels.triton
    monkeypatch.setattr(kernels.triton, "INTERPRETED", False)  # as if imported without the variable
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        select_ops("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match="attention_backend"):
        select_ops("flash", torch.device("cpu"))
    assert select_ops("auto", torch.device("cpu")).__name__ == "kernels.cpu"
