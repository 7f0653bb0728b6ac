"""Every client error is an OpenAI-shaped JSON error with the right status, and none hurts the server."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.entrypoints.server.conftest import model_context


def check_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "n": True}, "n"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({}, "prompt"),
    ({"prompt": [-1, 2]}, "prompt"),
    ({"prompt": [10 ** 9]}, "prompt"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": -2}, "top_k"),
    ({"prompt": "x", "min_p": 1.5}, "min_p"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "logprobs": 99}, "logprobs"),
    ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
    ({"segments": [["prose", "x"]]}, "segments"),
    ({"prompt": "x", "segments": [["code", "x"]]}, "prompt"),
])
def test_bad_values_are_400(client, body, param):
    check_error(client.post("/v1/completions", json=body), 400, param)


@pytest.mark.parametrize("raw", [b"{bad json", b"[1, 2]", b"\xff\xfe", b"", b"null",
                                 b"[" * 100000 + b"]" * 100000, b'{"prompt": "x", "seed": 1e999}'])
def test_malformed_json_is_400(client, raw):
    check_error(client.post("/v1/completions", content=raw,
                            headers={"content-type": "application/json"}), 400)


def test_prompt_beyond_context_is_400_one_that_fits_stops_there(client, tiny_codegen_dir):
    context = model_context(tiny_codegen_dir)
    error = check_error(client.post("/v1/completions", json={"prompt": [1] * (context + 1)}), 400,
                        "prompt")
    assert error["code"] == "context_length_exceeded"
    assert "longer than the context" in error["message"]
    for length, num_tokens in ((context, 1), (context - 2, 2)):
        body = {"prompt": [1] * length, "max_tokens": context + 1, "temperature": 0,
                "ignore_eos": True}
        answer = client.post("/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["finish_reason"] == "length"
        assert answer.json()["usage"]["completion_tokens"] == num_tokens


def test_suffix_is_400(client):
    error = check_error(client.post("/v1/completions", json={"prompt": "def f(", "suffix": "):"}),
                        400, "suffix")
    assert "fill-in-the-middle" in error["message"]


def test_unknown_model_is_404(client, server, model_name):
    error = check_error(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}), 404)
    assert error["code"] == "model_not_found"
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError, match="fill-in-the-middle"):
        oai.completions.create(model=model_name, prompt="x", suffix="y")


def test_unknown_route_and_method(client):
    check_error(client.get("/v1/nothing"), 404)
    check_error(client.get("/v1/completions"), 405)


def test_server_still_healthy_after_errors(client):
    assert client.get("/health").status_code == 200
    ok = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200
    assert ok.json()["usage"]["completion_tokens"] <= 2

