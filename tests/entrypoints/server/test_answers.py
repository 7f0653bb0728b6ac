"""Every client gets an answer it can use: a stream still running at the shutdown deadline ends
with an error event and [DONE], a 500 says nothing of the server's internals, and an empty API
key is refused at start-up instead of letting in empty bearer tokens."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import httpx
import pytest

from engine.core.llm_engine import LLMEngine
from engine.entrypoints.async_engine import AsyncLLM
from engine.entrypoints.server import build_app
from engine.entrypoints.server.completions import CompletionHandler
from tests.entrypoints.server.conftest import REPO, RUNNER, ServerProcess, model_context
from tests.entrypoints.server.test_admission import error_of, in_process

SECRET = "secret-internal-detail-42"


@pytest.fixture(scope="module")
def engine(tiny_codegen_dir):
    return LLMEngine(str(tiny_codegen_dir), dtype="float32")


def test_stream_running_at_the_shutdown_deadline_gets_an_error_and_done(tiny_codegen_dir):
    proc = ServerProcess(tiny_codegen_dir, "--shutdown-timeout", "0")
    body = {"prompt": [1, 2, 3], "max_tokens": model_context(tiny_codegen_dir) - 4, "n": 4,
            "temperature": 0, "ignore_eos": True, "stream": True}
    events = []
    try:
        with httpx.stream("POST", proc.url + "/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            events += [next(line for line in lines if line.startswith("data: "))]
            proc.proc.send_signal(signal.SIGTERM)
            try:
                events += [line for line in lines if line.startswith("data: ")]
            except httpx.RemoteProtocolError:   # the connection was cut mid-stream
                pass
        assert events[-1] == "data: [DONE]", events[-3:]
        error = json.loads(events[-2][6:])["error"]
        assert error["code"] == "shutting_down" and "shut down" in error["message"]
        assert proc.proc.wait(timeout=30) == 0, proc.output()
    finally:
        proc.stop()


def test_500_says_nothing_of_the_exception(engine, monkeypatch):
    def broken_add_request(*args, **kwargs):
        raise RuntimeError(SECRET)

    async def broken_create(self, req, raw_request):
        raise KeyError(SECRET)

    async def main():
        async with in_process(build_app(AsyncLLM(engine))) as client:
            monkeypatch.setattr(engine, "add_request", broken_add_request)
            in_engine = await client.post("/v1/completions", json={"prompt": "x"})
            monkeypatch.setattr(CompletionHandler, "create", broken_create)
            in_handler = await client.post("/v1/completions", json={"prompt": "x"})
            return in_engine, in_handler

    for response in asyncio.run(main()):
        error = error_of(response, 500)
        assert error["type"] == "server_error"
        assert SECRET not in response.text and "Error" not in response.text, response.text


def test_stream_failing_in_a_step_gets_an_error_without_internals(engine, monkeypatch):
    calls, real_step = [0], engine.step

    def step():
        calls[0] += 1
        if calls[0] > 3:
            raise RuntimeError(SECRET)
        return real_step()

    async def main():
        async with in_process(build_app(AsyncLLM(engine))) as client:
            monkeypatch.setattr(engine, "step", step)
            body = {"prompt": "def f(x):", "max_tokens": 50, "ignore_eos": True, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as response:
                return [line async for line in response.aiter_lines() if line.startswith("data: ")]

    events = asyncio.run(main())
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert error["type"] == "server_error" and SECRET not in json.dumps(error), error


def test_empty_api_key_is_refused(engine, tiny_codegen_dir):
    for key in ("", "   "):
        with pytest.raises(ValueError, match="api_key must not be empty"):
            build_app(AsyncLLM(engine), api_key=key)
    cmd = [sys.executable, "-c", RUNNER, "serve", "--model", str(tiny_codegen_dir),
           "--port", "0", "--api-key", " "]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the server started with an empty --api-key")
    assert done.returncode == 2 and "--api-key must not be empty" in done.stderr, done.stderr
