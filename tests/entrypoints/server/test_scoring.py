"""Scoring through POST /v1/completions: echo + logprobs (+ max_tokens 0) answers OpenAI's legacy
logprobs for the prompt tokens, then the generated ones; transformers' fp32 log_softmax over the
sampleable ids is the oracle."""

from __future__ import annotations

import json

import openai
import pytest
import torch
from tokenizers import Tokenizer

from tests.checkpoints import hf_model

PROMPT = "def fib(n):\n    return n"


@pytest.fixture(scope="module")
def oracle(tiny_codegen_dir):
    """(tokenizer, ids -> [len(ids), sampleable vocab] log_softmax predicting token p + 1)."""
    tokenizer = Tokenizer.from_file(str(tiny_codegen_dir / "tokenizer.json"))
    model = hf_model(tiny_codegen_dir)
    vocab = tokenizer.get_vocab_size()

    @torch.no_grad()
    def logprobs(ids: list[int]) -> torch.Tensor:
        return model(torch.tensor([ids])).logits[0, :, :vocab].float().log_softmax(-1)
    return tokenizer, logprobs


def complete(client, **body) -> dict:
    response = client.post("/v1/completions", json={"temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()


def check_prompt_part(logprobs: dict, tokenizer, ids: list[int], ref: torch.Tensor, k: int):
    num = len(ids)
    assert logprobs["tokens"][:num] == [tokenizer.decode([t]) for t in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    for p in range(1, num):
        assert logprobs["token_logprobs"][p] == pytest.approx(ref[p - 1, ids[p]].item(), abs=1e-4)
        top = logprobs["top_logprobs"][p]
        expected = {t: ref[p - 1, t].item() for t in [ids[p], *ref[p - 1].topk(k).indices.tolist()]}
        assert sorted(top.values()) == pytest.approx(sorted(expected.values()), abs=1e-4)
        for t, logprob in expected.items():  # keys: the token's text ("bytes:\x.." for a piece)
            if "\ufffd" not in tokenizer.decode([t]):
                assert top[tokenizer.decode([t])] == pytest.approx(logprob, abs=1e-4)
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0
    assert all(b - a == len(t) for a, b, t in zip(offsets, offsets[1:], logprobs["tokens"]))


def test_echo_max_tokens_0_scores_the_prompt(client, oracle):
    tokenizer, logprobs_of = oracle
    ids = tokenizer.encode(PROMPT).ids
    answer = complete(client, prompt=PROMPT, echo=True, logprobs=2, max_tokens=0)
    choice = answer["choices"][0]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    check_prompt_part(choice["logprobs"], tokenizer, ids, logprobs_of(ids), 2)
    assert answer["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0,
                               "total_tokens": len(ids)}


def test_echo_with_generation_puts_the_prompt_first(client, oracle):
    tokenizer, logprobs_of = oracle
    ids = tokenizer.encode(PROMPT).ids
    plain = complete(client, prompt=PROMPT, logprobs=1, max_tokens=4, ignore_eos=True)["choices"][0]
    echoed = complete(client, prompt=PROMPT, echo=True, logprobs=1, max_tokens=4,
                      ignore_eos=True)["choices"][0]
    assert echoed["text"] == PROMPT + plain["text"]
    check_prompt_part(echoed["logprobs"], tokenizer, ids, logprobs_of(ids), 1)
    generated = {field: echoed["logprobs"][field][len(ids):] for field in echoed["logprobs"]}
    assert generated["tokens"] == plain["logprobs"]["tokens"]
    # the last layer ran more rows for the echoed prompt: the same values up to rounding
    assert generated["token_logprobs"] == pytest.approx(plain["logprobs"]["token_logprobs"], abs=1e-5)
    for got, want in zip(generated["top_logprobs"], plain["logprobs"]["top_logprobs"]):
        assert got == pytest.approx(want, abs=1e-5)
    # The generated tokens' offsets continue after the prompt's.
    assert generated["text_offset"] == [o + len(PROMPT) for o in plain["logprobs"]["text_offset"]]


def test_token_id_batches_as_lm_eval_sends_them(client, oracle):
    tokenizer, logprobs_of = oracle
    prompts = [tokenizer.encode("import os").ids, tokenizer.encode("x = [1, 2]").ids]
    answer = complete(client, prompt=prompts, echo=True, logprobs=1, max_tokens=1, seed=1234)
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    for ids, choice in zip(prompts, answer["choices"]):
        ref = logprobs_of(ids)
        assert len(choice["logprobs"]["token_logprobs"]) == len(ids) + 1
        check_prompt_part(choice["logprobs"], tokenizer, ids, ref, 1)
        # the generated token is greedy: its logprob is the best of the last prompt position
        assert choice["logprobs"]["token_logprobs"][-1] == pytest.approx(ref[-1].max().item(), abs=1e-4)


def test_echo_without_logprobs_and_n(client):
    answer = complete(client, prompt=PROMPT, echo=True, max_tokens=0, n=2)
    assert [c["text"] for c in answer["choices"]] == [PROMPT, PROMPT]
    assert all(c["logprobs"] is None for c in answer["choices"])


def sse_chunks(client, body: dict) -> list[dict]:
    with client.stream("POST", "/v1/completions", json={"temperature": 0, **body,
                                                          "stream": True}) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("max_tokens", [0, 5])
def test_stream_sends_the_prompt_in_the_first_chunk(client, max_tokens):
    body = {"prompt": PROMPT, "echo": True, "logprobs": 2, "max_tokens": max_tokens,
            "ignore_eos": True}
    whole = complete(client, **body)["choices"][0]
    chunks = [c["choices"][0] for c in sse_chunks(client, body)]
    assert chunks[0]["text"].startswith(PROMPT)
    assert chunks[0]["logprobs"]["token_logprobs"][0] is None
    assert "".join(c["text"] for c in chunks) == whole["text"]
    for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [v for c in chunks for v in c["logprobs"][field]] == whole["logprobs"][field]
    assert chunks[-1]["finish_reason"] == "length"


def test_openai_client_scores(server, model_name):
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    result = oai.completions.create(model=model_name, prompt=PROMPT, echo=True, logprobs=1,
                                    max_tokens=0, temperature=0)
    assert result.choices[0].text == PROMPT
    assert result.choices[0].logprobs.token_logprobs[0] is None
    assert all(isinstance(v, float) for v in result.choices[0].logprobs.token_logprobs[1:])


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0, "echo": False, "logprobs": 1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0, "echo": True, "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "max_tokens": -1, "echo": True}, "max_tokens"),
    ({"prompt": "x", "echo": 1}, "echo"),
])
def test_bad_scoring_requests_are_400(client, body, param):
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert complete(client, prompt="x", max_tokens=1)["choices"][0]["finish_reason"]
