"""AsyncLLM in-process over a real tiny engine: cumulative outputs, abort, queue bound, step errors."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from engine.core.llm_engine import LLMEngine
from engine.core.sampling_params import SamplingParams
from engine.entrypoints.async_engine import AsyncLLM, EngineClosed, EngineError, QueueFull
from engine.worker import model_runner
from engine.worker.sampler import sample

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_codegen_dir):
    return LLMEngine(str(tiny_codegen_dir), dtype="float32", max_num_seqs=2)


def run(engine, body, max_waiting: int = 8):
    async def main():
        llm = AsyncLLM(engine, max_waiting=max_waiting)
        llm.start()
        try:
            return await body(llm)
        finally:
            await llm.shutdown()
    return asyncio.run(main())


def test_generate_is_cumulative_and_batched(engine):
    async def body(llm):
        async def one(i):
            outs = [o async for o in llm.generate("def f(x):", GREEDY, f"r{i}")]
            return outs
        return await asyncio.gather(*(one(i) for i in range(5)))

    results = run(engine, body)
    finals = [outs[-1] for outs in results]
    assert all(o.finished and len(o.outputs[0].token_ids) == 12 for o in finals)
    assert len({tuple(o.outputs[0].token_ids) for o in finals}) == 1
    for outs in results:
        lengths = [len(o.outputs[0].token_ids) for o in outs]
        assert lengths == sorted(lengths)
        assert all(outs[-1].outputs[0].text.startswith(o.outputs[0].text) for o in outs)


def test_abort_frees_blocks_and_bad_requests_raise(engine):
    long = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)

    async def body(llm):
        with pytest.raises(ValueError):
            await llm.add_request("bad", "", GREEDY)
        stream = await llm.add_request("long", "def f(x):", long)
        await stream.__anext__()
        assert llm.stats["num_used_blocks"] > 0
        llm.abort("long")
        with pytest.raises(EngineClosed):
            await stream.__anext__()
        for _ in range(200):
            if llm.stats["num_used_blocks"] == 0 and llm.stats["num_running"] == 0:
                break
            await asyncio.sleep(0.01)
        return dict(llm.stats)

    stats = run(engine, body)
    assert stats["num_used_blocks"] == 0 and stats["num_running"] == 0


def test_queue_full(engine):
    long = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)

    async def body(llm):
        for i in range(2):                         # max_num_seqs=2: both run
            stream = await llm.add_request(f"q{i}", "x", long)
            await stream.__anext__()
        waiting = await llm.add_request("w", "x", long)
        with pytest.raises(QueueFull):
            await llm.add_request("over", "x", long)
        for request_id in ("q0", "q1", "w"):
            llm.abort(request_id)
        return waiting

    run(engine, body, max_waiting=1)


def test_step_failure_fails_requests_not_the_loop(engine, monkeypatch):
    real_step = engine.step
    calls = {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real_step()

    async def body(llm):
        with pytest.raises(EngineError, match="boom"):
            async with contextlib.aclosing(llm.generate("x", GREEDY, "a")) as gen:
                async for _ in gen:
                    pass
        return [o async for o in llm.generate("x", GREEDY, "b")][-1]

    monkeypatch.setattr(engine, "step", flaky_step)
    final = run(engine, body)
    assert final.finished and len(final.outputs[0].token_ids) == 12


def test_failing_request_among_eight_streams(tiny_codegen_dir, monkeypatch):
    wide = LLMEngine(str(tiny_codegen_dir), dtype="float32", max_num_seqs=16)
    prompts = [f"def f{i}(x):\n    return x * {i}" for i in range(8)]

    async def streams(llm, with_poison: bool):
        async def one(request_id, prompt):
            try:
                return [o async for o in llm.generate(prompt, GREEDY, request_id)][-1]
            except EngineError as error:
                return error
        ids = [f"s{i}" for i in range(8)] + ["poison"] * with_poison
        return dict(zip(ids, await asyncio.gather(
            *(one(rid, p) for rid, p in zip(ids, prompts + ["def poison():"])))))

    clean = run(wide, lambda llm: streams(llm, False))

    def poisoned(logits, seqs, row_stats):
        if any(s.request.request_id == "poison" and s.num_output_tokens >= 2 for s in seqs):
            raise RuntimeError("poisoned sampler")
        return sample(logits, seqs, row_stats)

    monkeypatch.setattr(model_runner, "sample", poisoned)
    results = run(wide, lambda llm: streams(llm, True), max_waiting=16)
    assert isinstance(results.pop("poison"), EngineError)
    assert {rid: o.outputs[0].token_ids for rid, o in results.items()} == \
        {rid: o.outputs[0].token_ids for rid, o in clean.items()}
    assert all(o.finished and len(o.outputs[0].token_ids) == 12 for o in results.values())


def test_shutdown_rejects_new_requests(engine):
    async def body(llm):
        await llm.shutdown()
        with pytest.raises(EngineClosed):
            await llm.add_request("late", "x", GREEDY)

    run(engine, body)


def test_gptneo_through_async_llm(tiny_gptneo_dir):
    engine = LLMEngine(str(tiny_gptneo_dir), dtype="float32")

    async def body(llm):
        async def one(i):
            return [o async for o in llm.generate("import os\n", GREEDY, f"neo{i}")][-1]
        return await asyncio.gather(*(one(i) for i in range(3)))

    finals = run(engine, body)
    assert len({tuple(o.outputs[0].token_ids) for o in finals}) == 1
    assert all(len(o.outputs[0].token_ids) == 12 for o in finals)
