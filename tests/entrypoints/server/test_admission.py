"""Admission of big or bad inputs: bodies over the limit are refused while they arrive, prompts are
tokenised off the engine thread (and a prompt too long for the context not at all), a prompt list
the queue can never hold is a 400, text that is not valid Unicode is a 400 naming the prompt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading

import httpx
import pytest

from engine.core.llm_engine import LLMEngine
from engine.entrypoints.async_engine import AsyncLLM
from engine.entrypoints.server import build_app
from tests.core.test_prompt_checks import spy_on_encode

ERROR_KEYS = {"message", "type", "param", "code"}
CODE = "def f(x):\n    return x\n"


@pytest.fixture(scope="module")
def engine(tiny_codegen_dir):
    return LLMEngine(str(tiny_codegen_dir), dtype="float32")


@contextlib.asynccontextmanager
async def in_process(app):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            yield client


def post_all(app, *bodies) -> list[httpx.Response]:
    """POST each body (a dict, or raw bytes) to /v1/completions of an in-process app."""
    async def main():
        async with in_process(app) as client:
            return [await client.post(
                "/v1/completions", content=b if isinstance(b, bytes) else json.dumps(b),
                headers={"content-type": "application/json"}) for b in bodies]
    return asyncio.run(main())


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS and error["message"]
    return error


def test_prompts_are_tokenised_off_the_engine_thread(engine, monkeypatch):
    threads, engine_prompts = [], []
    real_encode, real_add = engine.tokenizer.encode, engine.add_request

    def encode(text, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return real_encode(text, *args, **kwargs)

    def add_request(request_id, prompt, params=None):
        engine_prompts.append(prompt)
        return real_add(request_id, prompt, params)

    monkeypatch.setattr(engine.tokenizer, "encode", encode)
    monkeypatch.setattr(engine, "add_request", add_request)
    responses = post_all(build_app(AsyncLLM(engine)),
                         {"prompt": ["def f(x):", "import os"], "max_tokens": 2},
                         {"segments": [["code", "def g():"], ["text", '"""doc"""']],
                          "max_tokens": 2})
    assert [r.status_code for r in responses] == [200, 200]
    assert len(threads) == 4 and all(t.startswith("codeinfer-tokenize") for t in threads), threads
    assert len(engine_prompts) == 3   # the engine thread got token ids, never text to tokenise
    assert all(isinstance(p, dict) and "prompt_token_ids" in p for p in engine_prompts)


def test_request_aborted_while_tokenised_never_reaches_the_engine(engine, monkeypatch):
    release, real_tokenize, added = threading.Event(), engine.tokenize, []

    def slow_tokenize(*args, **kwargs):
        release.wait(10)
        return real_tokenize(*args, **kwargs)

    monkeypatch.setattr(engine, "tokenize", slow_tokenize)
    monkeypatch.setattr(engine, "add_request", lambda *args, **kwargs: added.append(args))

    async def main():
        llm = AsyncLLM(engine)
        llm.start()
        pending = [asyncio.ensure_future(llm.add_request(f"r{i}", "def f(x):", None))
                   for i in range(2)]
        await asyncio.sleep(0.05)
        assert llm.num_waiting == 2   # being tokenised counts as waiting
        llm.abort("r0")
        shutdown = asyncio.ensure_future(llm.shutdown())   # aborts r1
        await asyncio.sleep(0.05)
        release.set()
        await shutdown
        return await asyncio.gather(*pending, return_exceptions=True)

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results] == ["EngineClosed", "EngineClosed"]
    assert "shut down" in str(results[1]) and added == []


def test_prompt_too_long_for_the_context_is_refused_untokenised(engine, monkeypatch):
    lengths = spy_on_encode(engine, monkeypatch)
    huge = CODE * (15_000_000 // len(CODE))   # 15 MB: the JSON helper process decodes it
    app = build_app(AsyncLLM(engine))
    too_long, after = post_all(app, {"prompt": huge}, {"prompt": "def f(x):", "max_tokens": 2})
    error = error_of(too_long, 400)
    assert error["param"] == "prompt" and error["code"] == "context_length_exceeded"
    assert "characters" in error["message"] and lengths == [len("def f(x):")]
    assert after.status_code == 200


def test_big_bodies_decode_in_the_helper_like_small_ones(engine):
    from engine.entrypoints.server.body import INLINE_LIMIT
    pad = "x" * INLINE_LIMIT   # an ignored field makes the body big
    base = {"prompt": "def f(x):", "max_tokens": 3, "temperature": 0}
    big, small, malformed, surrogate = post_all(
        build_app(AsyncLLM(engine)), {**base, "user": pad}, base,
        b'{"prompt": "x", "user": "' + pad.encode() + b'"',
        b'{"prompt": "\\ud800 x", "user": "' + pad.encode() + b'"}')
    assert big.status_code == small.status_code == 200, big.text
    assert big.json()["choices"] == small.json()["choices"]
    assert "malformed JSON body" in error_of(malformed, 400)["message"]
    assert error_of(surrogate, 400)["param"] == "prompt"


def test_json_helper_that_died_is_replaced(engine):
    from engine.entrypoints.server.body import INLINE_LIMIT
    body = {"prompt": "def f(x):", "max_tokens": 2, "user": "x" * INLINE_LIMIT}
    app = build_app(AsyncLLM(engine))

    async def main():
        async with in_process(app) as client:
            first = await client.post("/v1/completions", json=body)
            helper = app.state.bodies._helper
            helper.kill()
            await helper.wait()
            return first, await client.post("/v1/completions", json=body)

    assert [r.status_code for r in asyncio.run(main())] == [200, 200]


def test_chunked_body_over_the_limit_is_413_before_it_is_all_read(engine):
    limit, piece = 64 * 1024, b" " * 4096
    app = build_app(AsyncLLM(engine), max_body_bytes=limit)
    received, messages = [0], []

    async def receive():   # a chunked body that never ends
        received[0] += len(piece)
        return {"type": "http.request", "body": piece, "more_body": True}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
             "headers": [(b"transfer-encoding", b"chunked"),
                         (b"content-type", b"application/json")]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    assert messages[0]["status"] == 413
    error = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))["error"]
    assert set(error) == ERROR_KEYS and str(limit) in error["message"]
    assert received[0] <= limit + len(piece)


def test_chunked_upload_is_refused_while_it_arrives(server):
    """A real server and socket: 64 MiB sent chunked (no Content-Length), the limit 16 MiB."""
    piece = b" " * (1 << 20)
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: "
                     b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < 64 * len(piece) and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += len(piece)
            if sent == 64 * len(piece):
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass   # the server answered and closed while we were still sending
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while data := sock.recv(65536):
                answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert set(json.loads(body)["error"]) == ERROR_KEYS
    assert sent <= 24 * len(piece)   # refused at the limit, not after reading all 64 MiB


def test_prompt_list_longer_than_the_queue_is_400(engine):
    app = build_app(AsyncLLM(engine, max_waiting=2))
    too_many, fits = post_all(app, {"prompt": ["a", "b", "c"], "max_tokens": 1},
                              {"prompt": ["a", "b"], "max_tokens": 1})
    error = error_of(too_many, 400)
    assert error["param"] == "prompt" and "3" in error["message"]
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 2


@pytest.mark.parametrize("raw", [
    rb'{"prompt": "def f(\ud800):"}', rb'{"prompt": ["ok", "\udfff"]}',
    rb'{"segments": [["code", "def f():"], ["text", "\ud83d"]]}',
])
def test_lone_surrogate_is_400_naming_the_prompt(server, raw):
    response = httpx.post(server.url + "/v1/completions", content=raw,
                          headers={"content-type": "application/json"}, timeout=30)
    error = error_of(response, 400)
    assert error["param"] == "prompt" and "not valid Unicode" in error["message"], error
