"""attention_backend="torch" is the pure reference path: every op, the packed linears included,
runs kernels.reference, and no C++ op is called."""
import pytest

import kernels.cpu
from engine import LLM, SamplingParams

OPS = ("gated_embedding", "rotary_store_kv", "paged_attention", "int8_linear", "bf16_linear")


@pytest.mark.parametrize("dtype", ["int8", "bfloat16", "float32"])
def test_torch_backend_calls_no_cpp_op(tiny_codegen_dir, dtype, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a C++ op ran under attention_backend='torch'")

    for name in OPS:
        monkeypatch.setattr(kernels.cpu, name, refuse)
    llm = LLM(str(tiny_codegen_dir), dtype=dtype, attention_backend="torch", num_kv_blocks=64)
    out = llm.generate("def add(a, b):", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 6
