"""Server lifecycle: API key, queue bound, dropped streams free their blocks, SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import openai
import pytest

from tests.entrypoints.server.conftest import ServerProcess, model_context

KEY = "sk-test-123"


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def long_request(model_dir) -> dict:
    """A greedy request that runs to the end of the context (never stops on EOS)."""
    return {"prompt": [1, 2, 3], "max_tokens": model_context(model_dir) - 4, "temperature": 0,
            "ignore_eos": True, "stream": True}


def first_chunk(lines) -> dict:
    """The next SSE chunk from `lines`, an iterator the caller keeps: dropping a half-read
    response.iter_lines() generator closes the connection (which would abort the request)."""
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line[6:])
    raise AssertionError("stream ended without a chunk")


def test_dropped_stream_frees_blocks(server, tiny_codegen_dir):
    assert server.metric("codeinfer_kv_blocks_used") == 0
    aborted = server.metric('codeinfer_requests_total{outcome="aborted"}')
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=long_request(tiny_codegen_dir)) as resp:
            lines = resp.iter_lines()
            first_chunk(lines)
            assert server.metric("codeinfer_kv_blocks_used") > 0
        # leaving the block closed the connection mid-stream
    assert wait_for(lambda: server.metric("codeinfer_kv_blocks_used") == 0), server.output()
    assert server.metric('codeinfer_requests_total{outcome="aborted"}') == aborted + 1
    assert server.metric("codeinfer_num_requests_running") == 0


def test_metrics_text(server):
    text = httpx.get(server.url + "/metrics").text
    for name in ("codeinfer_requests_total", "codeinfer_prompt_tokens_total",
                 "codeinfer_generation_tokens_total", "codeinfer_num_requests_running",
                 "codeinfer_num_requests_waiting", "codeinfer_kv_blocks_used",
                 "codeinfer_time_to_first_token_seconds_bucket",
                 "codeinfer_inter_token_latency_seconds_bucket", "codeinfer_prefix_cache_hit_rate"):
        assert f"\n{name}" in text, name
    threads = server.metric("codeinfer_cpu_threads")
    assert 1 <= threads <= (os.cpu_count() or 1), threads


@pytest.fixture(scope="module")
def guarded(tiny_codegen_dir):
    """One sequence at a time, one waiting request at most, an API key."""
    proc = ServerProcess(tiny_codegen_dir, "--api-key", KEY, "--max-num-seqs", "1",
                         "--max-queue", "1", "--shutdown-timeout", "20")
    yield proc
    proc.stop()


def test_api_key(guarded, tiny_codegen_dir):
    body = {"prompt": "x", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(guarded.url + "/v1/completions", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(guarded.url + "/v1/models").status_code == 401
    assert httpx.get(guarded.url + "/health").status_code == 200     # probes stay open
    ok = httpx.post(guarded.url + "/v1/completions", json=body,
                    headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY).models.list().data


def test_queue_full_is_503(guarded, tiny_codegen_dir):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = long_request(tiny_codegen_dir)
    with httpx.Client(base_url=guarded.url, headers=headers, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body) as running:
            lines = running.iter_lines()
            first_chunk(lines)                         # holds the only sequence slot
            with client.stream("POST", "/v1/completions", json=body) as waiting:
                assert waiting.status_code == 200      # accepted, queued behind `running`
                rejected = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
                assert rejected.status_code == 503, rejected.text
                assert rejected.headers["retry-after"]
                assert rejected.json()["error"]["code"] == "queue_full"
    assert wait_for(lambda: guarded.metric("codeinfer_kv_blocks_used") == 0)
    assert guarded.metric('codeinfer_requests_total{outcome="rejected"}') == 1
    ok = httpx.post(guarded.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                    headers=headers)
    assert ok.status_code == 200


def test_sigterm_finishes_in_flight_and_exits_0(guarded):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "def f(x):", "max_tokens": 48, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.Client(base_url=guarded.url, headers=headers, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            first_chunk(lines)
            guarded.proc.send_signal(signal.SIGTERM)
            events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    finish = json.loads(events[-2][6:])["choices"][0]["finish_reason"]
    assert finish == "length"                          # the in-flight request was finished
    assert guarded.proc.wait(timeout=30) == 0, guarded.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(guarded.url + "/health", timeout=2)


def engine_child(server_pid: int) -> int:
    """The pid of the server's engine process (the spawned child that is not Python's resource
    tracker)."""
    children = []
    for task in os.listdir(f"/proc/{server_pid}/task"):
        with open(f"/proc/{server_pid}/task/{task}/children") as f:
            children += [int(pid) for pid in f.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                return pid
    raise AssertionError(f"no engine process among the children {children}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_dead_engine_process_fails_streams_then_answers_503(tiny_codegen_dir):
    server = ServerProcess(tiny_codegen_dir)
    try:
        child = engine_child(server.proc.pid)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            with client.stream("POST", "/v1/completions", json=long_request(tiny_codegen_dir)) as response:
                lines = response.iter_lines()
                first_chunk(lines)
                os.kill(child, signal.SIGKILL)
                events = [line for line in lines if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            error = json.loads(events[-2][6:])["error"]
            assert error["code"] == "engine_dead" and "exit code -9" in error["message"]
            health = client.get("/health")
            assert health.status_code == 503 and "engine process" in health.json()["error"]["message"]
            later = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert later.status_code == 503 and later.json()["error"]["code"] == "engine_dead"
        assert server.stop() == 0
    finally:
        server.stop()


def test_a_killed_server_leaves_no_engine_process(tiny_codegen_dir):
    server = ServerProcess(tiny_codegen_dir)
    try:
        child = engine_child(server.proc.pid)
        server.proc.kill()
        server.proc.wait(timeout=10)
        assert wait_for(lambda: not alive(child), 20.0), "the engine process outlived its server"
    finally:
        server.stop()
