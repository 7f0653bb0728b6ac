"""engine.layers.program: on the C++ backend with packed linears, decode steps run the decoder layers
as one LayerProgram call (prefill steps all but the last layer), and that changes nothing: the same
tokens and bit-identical logprobs as the layer-by-layer path, both architectures, every packed
dtype, float and int8 KV caches, batched rows of different lengths (GPT-Neo's local window
crossed), prefill chunks beside decode rows. The program is recorded again when the KV cache is
bound again, and other backends and unpacked models keep the layer-by-layer path."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from kernels.cpu_program import LayerProgram

PROMPTS = [list(range(5, 8)), list(range(20, 60)), [7] * 19, list(range(100, 103)) * 6, [3, 1, 4, 1, 5]]


@pytest.fixture
def program_calls(monkeypatch):
    class Calls(list):  # rows per call; .ops: the num_ops each call ran (None: all)
        pass

    calls = Calls()
    real = LayerProgram.__call__

    def counted(self, x, *meta):
        calls.append(x.shape[0])
        ops.append(meta[5] if len(meta) > 5 else None)
        return real(self, x, *meta)

    ops = []
    calls.ops = ops

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
    assert program_calls[0] == sum(map(len, PROMPTS))  # the prefill, all but its last layer
    program = llm.engine.runner.model.program
    all_ops = program.get(program._dtype, 1).num_ops
    assert program_calls.ops[0] == all_ops * (program.num_layers - 1) // program.num_layers
    assert set(program_calls[1:]) == {len(PROMPTS)}  # batched decode rows, all in one call
    assert set(program_calls.ops[1:]) == {all_ops}
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


@pytest.mark.parametrize("arch", ["codegen", "gptneo"])
def test_prefill_beside_decode_rows_changes_nothing(arch, tiny_codegen_dir, tiny_gptneo_dir, program_calls):
    # A server's steps: requests arrive while others decode, and long prompts come in chunks, so
    # most steps mix a prefill chunk (only its last row kept) with decode rows.
    model = tiny_codegen_dir if arch == "codegen" else tiny_gptneo_dir
    llm = LLM(model=str(model), dtype="int8", kv_cache_dtype="int8", attention_backend="cpu",
              max_num_batched_tokens=32)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=2)

    def staggered(enabled: bool):
        engine = llm.engine
        engine.runner.model.program.enabled = enabled
        done = {}
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(f"{enabled}-{i}", {"prompt_token_ids": prompt}, params)
            for _ in range(2):
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [(done[f"{enabled}-{i}"].outputs[0].token_ids, done[f"{enabled}-{i}"].outputs[0].logprobs)
                for i in range(len(PROMPTS))]

    with_program = staggered(True)
    program = llm.engine.runner.model.program
    partial = [rows for rows, ops in zip(program_calls, program_calls.ops) if ops < program.get(program._dtype, 1).num_ops]
    assert any(rows > 1 for rows in partial), "no prefill step ran the program"
    used = len(program_calls)
    assert staggered(False) == with_program
    assert len(program_calls) == used
