"""Completions against a real server: httpx and the official openai client, streamed and not."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from tokenizers import Tokenizer

PROMPT = "def fibonacci(n):\n"
GREEDY = {"temperature": 0, "max_tokens": 24, "ignore_eos": True}


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(line[len("data: "):])
    return events


def streamed(client: httpx.Client, body: dict) -> tuple[dict[int, str], dict[int, str], list]:
    """Texts and finish reasons per choice index from an SSE stream, plus the raw events."""
    texts, reasons = {}, {}
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        assert chunk["object"] == "text_completion"
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"] is not None:
                reasons[choice["index"]] = choice["finish_reason"]
    return texts, reasons, events


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_health_and_models(client, model_name):
    assert client.get("/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    assert model_name


def test_greedy_stream_equals_non_stream(client, model_name):
    body = {"model": model_name, "prompt": PROMPT, **GREEDY}
    full = client.post("/v1/completions", json=body).json()
    choice = full["choices"][0]
    assert choice["finish_reason"] == "length"
    assert full["usage"]["completion_tokens"] == 24
    assert full["usage"]["total_tokens"] == full["usage"]["prompt_tokens"] + 24
    texts, reasons, _ = streamed(client, body)
    assert texts == {0: choice["text"]}
    assert reasons == {0: "length"}


def test_openai_client(oai, model_name):
    full = oai.completions.create(model=model_name, prompt=PROMPT, **_oai(GREEDY))
    assert full.usage.completion_tokens == 24
    text = "".join(chunk.choices[0].text for chunk in oai.completions.create(
        model=model_name, prompt=PROMPT, stream=True, **_oai(GREEDY)) if chunk.choices)
    assert text == full.choices[0].text
    assert oai.models.list().data[0].id == model_name


def test_openai_client_stream_usage(oai, model_name):
    chunks = list(oai.completions.create(model=model_name, prompt=PROMPT, stream=True,
                                         stream_options={"include_usage": True}, **_oai(GREEDY)))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_batch_prompts_and_n(client):
    body = {"prompt": [PROMPT, "import os\n"], "n": 2, "temperature": 0, "max_tokens": 8,
            "ignore_eos": True}
    out = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    # greedy samples of one prompt agree; choice i*n + j belongs to prompt i
    assert out["choices"][0]["text"] == out["choices"][1]["text"]
    assert out["choices"][2]["text"] == out["choices"][3]["text"]
    assert out["usage"]["completion_tokens"] == 32
    texts, _, _ = streamed(client, body)
    assert texts == {c["index"]: c["text"] for c in out["choices"]}


def test_echo_logprobs_and_token_id_prompts(client, tiny_codegen_dir):
    text = client.post("/v1/completions", json={"prompt": PROMPT, **GREEDY}).json()
    text = text["choices"][0]["text"]
    echo = client.post("/v1/completions", json={"prompt": PROMPT, "echo": True, **GREEDY}).json()
    assert echo["choices"][0]["text"] == PROMPT + text
    lp = client.post("/v1/completions", json={"prompt": PROMPT, "logprobs": 2, **GREEDY}).json()
    logprobs = lp["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 24
    assert all(v <= 0 for v in logprobs["token_logprobs"])
    assert all(len(top) >= 2 for top in logprobs["top_logprobs"])
    if not any(t.startswith("bytes:") for t in logprobs["tokens"]):   # partial UTF-8 pieces
        assert "".join(logprobs["tokens"]) == text
    ids = Tokenizer.from_file(str(tiny_codegen_dir / "tokenizer.json")).encode(
        PROMPT, add_special_tokens=False).ids
    for prompt in (ids, [ids, ids]):
        out = client.post("/v1/completions", json={"prompt": prompt, **GREEDY}).json()
        assert [c["text"] for c in out["choices"]] == [text] * (2 if prompt[0] == ids else 1)
        assert out["usage"]["prompt_tokens"] == len(ids) * len(out["choices"])


def test_seeded_sampling_is_reproducible(client):
    body = {"prompt": PROMPT, "temperature": 0.9, "top_p": 0.95, "top_k": 20, "min_p": 0.01,
            "seed": 1234, "max_tokens": 12, "presence_penalty": 0.5, "frequency_penalty": 0.3,
            "repetition_penalty": 1.1}
    first = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    second = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert first == second


def test_stop_string_and_segments(client):
    base = client.post("/v1/completions", json={"prompt": PROMPT, **GREEDY}).json()
    text = base["choices"][0]["text"]
    stop = text[5:7] if len(text) > 7 else None
    if stop and stop.strip():
        cut = client.post("/v1/completions", json={"prompt": PROMPT, "stop": [stop], **GREEDY}).json()
        assert cut["choices"][0]["finish_reason"] == "stop"
        assert cut["choices"][0]["text"] == text[:text.index(stop)]
    seg = client.post("/v1/completions", json={"segments": [["code", PROMPT]], **GREEDY})
    assert seg.status_code == 200
    assert seg.json()["choices"][0]["text"] == text  # no modality remap on plain CodeGen


async def _stream_text(client: httpx.AsyncClient, body: dict) -> str:
    text = ""
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
    return text


def test_32_concurrent_streams(server, client):
    body = {"prompt": PROMPT, **GREEDY}
    expected = client.post("/v1/completions", json=body).json()["choices"][0]["text"]

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as ac:
            return await asyncio.gather(*(_stream_text(ac, body) for _ in range(32)))

    texts = asyncio.run(run())
    assert texts == [expected] * 32


def _oai(params: dict) -> dict:
    """GREEDY for the openai client: non-standard fields go through extra_body."""
    extra = {k: v for k, v in params.items() if k == "ignore_eos"}
    return {**{k: v for k, v in params.items() if k != "ignore_eos"}, "extra_body": extra}
