"""engine.layers.program: on the C++ backend with packed linears, decode steps run the decoder layers
as one LayerProgram call, and that changes nothing: the same tokens and bit-identical logprobs as
the layer-by-layer path, both architectures, every packed dtype, float and int8 KV caches, batched
rows of different lengths (GPT-Neo's local window crossed). The program is recorded again when the
KV cache is bound again, and other backends and unpacked models keep the layer-by-layer path."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from kernels.cpu_program import LayerProgram

PROMPTS = [list(range(5, 8)), list(range(20, 60)), [7] * 19, list(range(100, 103)) * 6, [3, 1, 4, 1, 5]]


@pytest.fixture
def program_calls(monkeypatch):
    calls = []
    real = LayerProgram.__call__

    def counted(self, x, *meta):
        calls.append(x.shape[0])
        return real(self, x, *meta)

    monkeypatch.setattr(LayerProgram, "__call__", counted)
    return calls


def _generate(llm: LLM, enabled: bool):
    llm.engine.runner.model.program.enabled = enabled
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, logprobs=3)
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=params)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
@pytest.mark.parametrize("dtype", ["int8", "bfloat16", "int4"])
@pytest.mark.parametrize("arch", ["codegen", "gptneo"])
def test_program_changes_no_token_or_logprob(arch, dtype, kv_cache_dtype, tiny_codegen_dir, tiny_gptneo_dir,
                                             program_calls):
    model = tiny_codegen_dir if arch == "codegen" else tiny_gptneo_dir
    llm = LLM(model=str(model), dtype=dtype, kv_cache_dtype=kv_cache_dtype, attention_backend="cpu")
    with_program = _generate(llm, True)
    used = len(program_calls)
    assert used >= 20, "decode steps did not run the program"
    assert max(program_calls) == len(PROMPTS)  # batched decode rows, all in one call
    layer_by_layer = _generate(llm, False)
    assert len(program_calls) == used
    assert with_program == layer_by_layer


def test_program_recorded_again_for_a_new_cache(tiny_codegen_dir, program_calls):
    llm = LLM(model=str(tiny_codegen_dir), dtype="int8", attention_backend="cpu")
    runner = llm.engine.runner
    before = _generate(llm, True)
    first = runner.model.program._program
    runner.cache.bind(runner.model.layers)  # the layers' bound ops are made again
    assert _generate(llm, True) == before
    assert runner.model.program._program is not first


@pytest.mark.parametrize("dtype,backend", [("float32", "cpu"), ("int8", "torch")])
def test_layer_by_layer_elsewhere(dtype, backend, tiny_codegen_dir, program_calls):
    llm = LLM(model=str(tiny_codegen_dir), dtype=dtype, attention_backend=backend)
    _generate(llm, True)
    assert program_calls == []


def test_steps_over_the_row_cap_run_layer_by_layer(tiny_codegen_dir, program_calls, monkeypatch):
    # A step that needs every row of a long prefill (prompt logprobs) is GEMM-bound: it runs the
    # layers one by one, so the program's kept scratch stays bounded; decode steps still use it.
    from engine.layers import program as program_module
    monkeypatch.setattr(program_module, "MAX_PROGRAM_ROWS", 8)
    llm = LLM(model=str(tiny_codegen_dir), dtype="int8", attention_backend="cpu")
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, prompt_logprobs=1)
    prompt = list(range(20, 60))
    with_cap = llm.generate(prompt_token_ids=[prompt], sampling_params=params)[0]
    assert program_calls and max(program_calls) <= 8
    llm.engine.runner.model.program.enabled = False
    without = llm.generate(prompt_token_ids=[prompt], sampling_params=params)[0]
    assert with_cap.outputs[0].token_ids == without.outputs[0].token_ids
    assert with_cap.prompt_logprobs == without.prompt_logprobs
