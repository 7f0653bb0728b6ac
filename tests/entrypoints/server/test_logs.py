"""What the server logs, as vLLM's does: one access line per request with its token counts and
latency, engine stats at an interval while busy (and silence when idle), timestamps, and the
serve flags that turn the lines off."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time

import httpx
import pytest

from engine.core.llm_engine import LLMEngine
from engine.entrypoints.async_engine import AsyncLLM
from engine.entrypoints.cli import serve
from engine.entrypoints.cli.main import build_parser
from engine.entrypoints.server import build_app
from tests.entrypoints.server.conftest import ServerProcess
from tests.entrypoints.server.test_admission import in_process

ACCESS = re.compile(r'^127\.0\.0\.1:\d+ "(\w+) (\S+) HTTP/1\.1" (\d{3}) prompt_tokens=(\d+|-) '
                    r'completion_tokens=(\d+|-) latency=\d+\.\d{3}s$')
STATS = re.compile(r"^Avg prompt throughput: (\d+\.\d) tokens/s, Avg generation throughput: "
                   r"(\d+\.\d) tokens/s, Running: (\d+) reqs, Waiting: (\d+) reqs, KV cache usage: "
                   r"\d+\.\d%, Prefix cache hit rate: \d+\.\d%$")
LONG = {"prompt": "def f(x):", "max_tokens": 120, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(tiny_codegen_dir):
    return LLMEngine(str(tiny_codegen_dir), dtype="float32", num_kv_blocks=64)


def lines(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def access_lines(caplog) -> list[tuple]:
    found = [ACCESS.match(line) for line in lines(caplog, "codeinfer.access")]
    assert all(found), lines(caplog, "codeinfer.access")
    return [m.groups() for m in found]


def test_one_access_line_per_request_with_its_usage(engine, caplog):
    async def main():
        async with in_process(build_app(AsyncLLM(engine))) as client:
            plain = await client.post("/v1/completions", json={"prompt": "def", "max_tokens": 5,
                                                               "n": 2})
            async with client.stream("POST", "/v1/completions", json={
                    "prompt": "x = ", "max_tokens": 4, "stream": True,
                    "stream_options": {"include_usage": True}}) as response:
                events = [line async for line in response.aiter_lines() if line.startswith("data: {")]
            bad = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": "5"})
            health = await client.get("/health")
            return plain, json.loads(events[-1][6:]), bad, health

    with caplog.at_level(logging.INFO, logger="codeinfer.access"):
        plain, streamed, bad, health = asyncio.run(main())
    usage, stream_usage = plain.json()["usage"], streamed["usage"]
    assert access_lines(caplog) == [
        ("POST", "/v1/completions", "200", str(usage["prompt_tokens"]), str(usage["completion_tokens"])),
        ("POST", "/v1/completions", "200", str(stream_usage["prompt_tokens"]),
         str(stream_usage["completion_tokens"])),
        ("POST", "/v1/completions", "400", "-", "-"),   # refused before it was counted
        ("GET", "/health", "200", "-", "-")]
    assert usage["completion_tokens"] > 0 and bad.status_code == 400 and health.status_code == 200


def test_unauthorized_and_unknown_routes_are_logged_too(engine, caplog):
    async def main():
        async with in_process(build_app(AsyncLLM(engine), api_key="k")) as client:
            await client.get("/v1/models")
            await client.get("/nowhere")

    with caplog.at_level(logging.INFO, logger="codeinfer.access"):
        asyncio.run(main())
    assert [(m, p, s) for m, p, s, *_ in access_lines(caplog)] == [
        ("GET", "/v1/models", "401"), ("GET", "/nowhere", "404")]


def test_log_requests_off_writes_no_access_line(engine, caplog):
    async def main():
        async with in_process(build_app(AsyncLLM(engine), log_requests=False)) as client:
            assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
                    ).status_code == 200

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert lines(caplog, "codeinfer.access") == []


def test_stats_while_busy_and_none_when_idle(engine, caplog):
    interval = 0.05

    async def main():
        async with in_process(build_app(AsyncLLM(engine), stats_interval=interval)) as client:
            await asyncio.sleep(5 * interval)        # idle before: nothing to say
            idle_before = len(lines(caplog, "codeinfer.server"))
            answer = await client.post("/v1/completions", json=LONG)
            await asyncio.sleep(3 * interval)        # the interval in which it finished
            settled = len(lines(caplog, "codeinfer.server"))
            await asyncio.sleep(6 * interval)        # idle after
            return idle_before, answer, settled

    with caplog.at_level(logging.INFO, logger="codeinfer.server"):
        idle_before, answer, settled = asyncio.run(main())
    assert answer.status_code == 200 and idle_before == 0
    stats = [STATS.match(line) for line in lines(caplog, "codeinfer.server")]
    assert stats and all(stats), lines(caplog, "codeinfer.server")
    assert len(stats) == settled  # not one line more once the server went idle
    assert any(m.group(3) == "1" for m in stats)  # the request was seen running
    assert sum(float(m.group(2)) for m in stats) > 0
    # Every prompt token is counted once, when its prefill is done.
    prompt_rates = [float(m.group(1)) for m in stats]
    assert any(rate > 0 for rate in prompt_rates)


def test_build_app_refuses_a_bad_stats_interval(engine):
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="stats_interval"):
            build_app(AsyncLLM(engine), stats_interval=bad)


def test_serve_flags_turn_the_lines_off():
    parse = build_parser().parse_args
    assert serve.app_options(parse(["serve"])) == {
        "api_key": None, "shutdown_timeout": 30.0, "log_requests": True, "stats_interval": 10.0}
    off = serve.app_options(parse(["serve", "--disable-log-requests", "--disable-log-stats"]))
    assert (off["log_requests"], off["stats_interval"]) == (False, None)


def test_log_lines_have_timestamps():
    code = ("import logging; from engine.entrypoints.cli.serve import configure_logging; "
            "configure_logging('info'); logging.getLogger('x').info('hello'); "
            "logging.getLogger('y').debug('hidden')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stderr
    assert re.fullmatch(r"INFO \d\d-\d\d \d\d:\d\d:\d\d \[<string>:1\] hello\n", err), err


def test_serve_logs_the_summary_and_each_request(tiny_codegen_dir):
    proc = ServerProcess(tiny_codegen_dir, "--log-level", "info", "--served-model-name", "a", "b")
    try:
        models = httpx.get(proc.url + "/v1/models", timeout=10).json()["data"]
        answer = httpx.post(proc.url + "/v1/completions", timeout=60,
                            json={"model": "b", "prompt": "def", "max_tokens": 3})
        deadline = time.monotonic() + 10
        while "POST /v1/completions" not in proc.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        out = proc.output()
    finally:
        proc.stop()
    assert [m["id"] for m in models] == ["a", "b"] and answer.json()["model"] == "b"
    stamp = r"INFO \d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+:\d+\] "
    assert re.search(stamp + r"Loaded .* \(CodeGenForCausalLM\) in \d+\.\d\d s", out), out
    assert re.search(stamp + r'127\.0\.0\.1:\d+ "POST /v1/completions HTTP/1\.1" 200 '
                             r"prompt_tokens=\d+ completion_tokens=3 ", out), out
    assert re.search(stamp + "Uvicorn running on", out), out  # uvicorn's lines in the same format
