"""AsyncLLM over an EngineProcess (the engine in a spawned child): the same tokens as the engine
in this process, request errors that reach only their request, a child that dies or fails to
load, and a stop that leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

import pytest

from engine.core.llm_engine import LLMEngine
from engine.core.sampling_params import SamplingParams
from engine.engine_args import EngineArgs
from engine.entrypoints.async_engine import AsyncLLM, EngineError
from engine.entrypoints.engine_process import EngineProcess

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=1)
# One fixed thread on both sides: a float sum split across another thread count may round
# differently, and the comparison is of the process boundary only.
OPTIONS = dict(dtype="float32", max_num_seqs=4, num_kv_blocks=24, block_size=4, num_threads=1,
               dynamic_threads=False)
PROMPTS = ["def f(x):", "import os\n", "class A:\n    def"]


def run(engine, body):
    async def main():
        llm = AsyncLLM(engine, max_waiting=8)
        llm.start()
        try:
            return await body(llm)
        finally:
            await llm.shutdown()
    return asyncio.run(main())


async def finals(llm, prompts, params=GREEDY, prefix="r", together=True):
    """The final outputs of `prompts`, submitted at once or one after the other (a batch's
    make-up, which arrival timing decides, can move a float logprob in its last bit)."""
    async def one(i, prompt):
        out = None
        async for out in llm.generate(prompt, params, f"{prefix}{i}"):
            pass
        return out
    if together:
        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return [await one(i, p) for i, p in enumerate(prompts)]


def start(model_dir) -> EngineProcess:
    return EngineProcess(EngineArgs(model=str(model_dir), **OPTIONS))


def test_same_tokens_and_logprobs_as_the_engine_in_this_process(tiny_codegen_dir):
    local = run(LLMEngine(str(tiny_codegen_dir), **OPTIONS),
                lambda llm: finals(llm, PROMPTS, together=False))
    process = start(tiny_codegen_dir)
    remote = run(process, lambda llm: finals(llm, PROMPTS, together=False))
    for a, b in zip(local, remote):
        assert b.finished and b.outputs[0].token_ids == a.outputs[0].token_ids
        assert b.outputs[0].text == a.outputs[0].text
        assert b.outputs[0].logprobs == a.outputs[0].logprobs
    assert not process._process.is_alive() and process._process.exitcode == 0  # shutdown stops it


def test_a_request_the_engine_refuses_fails_alone(tiny_codegen_dir):
    too_long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def body(llm):
        with pytest.raises(ValueError, match="cache"):   # 24 blocks of 4 tokens cannot hold it
            await llm.add_request("big", "def f(x):", too_long)
        outs = await finals(llm, PROMPTS[:2])
        return outs, llm.stats

    proc = start(tiny_codegen_dir)
    outs, stats = run(proc, body)
    assert all(o.finished and len(o.outputs[0].token_ids) == 10 for o in outs)
    assert stats["num_used_blocks"] == 0
    assert proc.join(10.0) and proc._process.exitcode == 0


def test_a_dead_engine_process_fails_every_request_and_refuses_new_ones(tiny_codegen_dir):
    proc = start(tiny_codegen_dir)
    long = SamplingParams(temperature=0, max_tokens=80, ignore_eos=True)

    async def body(llm):
        stream = await llm.add_request("long", "def f(x):", long)
        await stream.__anext__()
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="engine process exited"):
            async for _ in stream:
                pass
        with pytest.raises(EngineError, match="engine process exited"):
            await llm.add_request("after", "def g():", GREEDY)
        return llm.error

    assert "exit code -9" in run(proc, body)


def test_a_model_that_fails_to_load_raises_in_the_server_process(tiny_codegen_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_codegen_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises((OSError, ValueError)):
        start(broken)
