"""One request's values never end other clients' streams: poison values are a 400 (or harmless),
and a request that fails inside an engine step gets an error event while the others finish."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import uvicorn

from engine.core.llm_engine import LLMEngine
from engine.entrypoints.async_engine import AsyncLLM
from engine.entrypoints.server import build_app
from engine.worker import model_runner
from engine.worker.sampler import sample
from tests.entrypoints.server.conftest import free_port

STREAM = {"temperature": 0, "max_tokens": 40, "ignore_eos": True, "stream": True}
PROMPTS = [f"def f{i}(x):\n    return x + {i}" for i in range(8)]
NAN, INF = float("nan"), float("inf")
# (field, value, status): json.dumps writes NaN / Infinity, which the server's parser reads.
POISONS = [
    ("temperature", 1e-300, 200), ("top_k", 10 ** 20, 200),
    ("repetition_penalty", 1e-300, 400), ("repetition_penalty", 1e300, 400),
    ("repetition_penalty", NAN, 400), ("temperature", NAN, 400), ("temperature", INF, 400),
    ("top_p", NAN, 400), ("min_p", NAN, 400), ("presence_penalty", INF, 400),
    ("frequency_penalty", NAN, 400), ("n", 10 ** 20, 400), ("max_tokens", 10 ** 20, 400),
    ("seed", 10 ** 20, 400), ("logprobs", 10 ** 20, 400), ("top_k", 1.5, 400),
    ("ignore_eos", "yes", 400), ("echo", "yes", 400), ("stream", "yes", 400),
]


async def read_stream(client: httpx.AsyncClient, body: dict, started: asyncio.Event | None = None):
    """(text, error events, ended with [DONE]) of one streamed completion."""
    text, errors, events = "", [], []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if started is not None:
                started.set()
            if events[-1] != "[DONE]":
                chunk = json.loads(events[-1])
                if "error" in chunk:
                    errors.append(chunk["error"])
                else:
                    text += "".join(c["text"] for c in chunk["choices"])
    return text, errors, events[-1:] == ["[DONE]"]


async def eight_streams_and(client: httpx.AsyncClient, poison):
    """The 8 streams, and `poison(client)` sent once every one of them is under way."""
    started = [asyncio.Event() for _ in PROMPTS]
    tasks = [asyncio.ensure_future(read_stream(client, {"prompt": p, **STREAM}, e))
             for p, e in zip(PROMPTS, started)]
    await asyncio.gather(*(e.wait() for e in started))
    result = await poison(client)
    return result, await asyncio.gather(*tasks)


def test_poison_values_never_touch_other_streams(server):
    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            clean = await asyncio.gather(*(read_stream(client, {"prompt": p, **STREAM})
                                           for p in PROMPTS))
            unaffected = 0
            for field, value, status in POISONS:
                async def poison(c):
                    return await c.post("/v1/completions", content=json.dumps(
                        {"prompt": "x", "max_tokens": 4, field: value}),
                        headers={"content-type": "application/json"})
                response, others = await eight_streams_and(client, poison)
                assert response.status_code == status, (field, value, response.text)
                if status == 400:
                    error = response.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"}
                    assert error["param"] == field and error["type"] == "invalid_request_error"
                assert others == clean, (field, value)
                unaffected += len(others)
            return unaffected

    assert asyncio.run(main()) == 8 * len(POISONS)


@pytest.fixture(scope="module")
def inprocess_url(tiny_codegen_dir):
    """A server in a thread of this process, so a test can patch its engine."""
    app = build_app(AsyncLLM(LLMEngine(str(tiny_codegen_dir), dtype="float32")))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "in-process server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(30)


@pytest.mark.parametrize("stream", [True, False])
def test_request_failing_in_a_step_gets_an_error_the_others_finish(inprocess_url, monkeypatch,
                                                                    stream):
    def poisoned(logits, seqs, row_stats):
        if any(s.request.prompt == "poison" and s.num_output_tokens >= 2 for s in seqs):
            raise RuntimeError("poisoned sampler")
        return sample(logits, seqs, row_stats)

    async def main():
        async with httpx.AsyncClient(base_url=inprocess_url, timeout=60) as client:
            clean = await asyncio.gather(*(read_stream(client, {"prompt": p, **STREAM})
                                           for p in PROMPTS))
            monkeypatch.setattr(model_runner, "sample", poisoned)
            body = {"prompt": "poison", **STREAM, "stream": stream}
            send = read_stream if stream else (lambda c, b: c.post("/v1/completions", json=b))
            return clean, *(await eight_streams_and(client, lambda c: send(c, body)))

    clean, poison, others = asyncio.run(main())
    if stream:
        text, errors, done = poison
        assert len(errors) == 1 and errors[0]["type"] == "server_error" and done
    else:
        assert poison.status_code == 500 and poison.json()["error"]["type"] == "server_error"
    assert others == clean
