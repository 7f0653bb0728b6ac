"""POST /tokenize and /detokenize: vLLM's shapes, the engine's token ids, round trips, and every
hostile body answered with a 4xx in OpenAI's error shape while the server keeps working."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading

import pytest

from engine.core.llm_engine import LLMEngine
from engine.entrypoints.async_engine import AsyncLLM
from engine.entrypoints.server import build_app
from engine.entrypoints.server.models import ServedModels
from engine.entrypoints.server.protocol import TokenizeRequest
from engine.entrypoints.server.tokenization import TokenizationHandler
from engine.tokenizer import Tokenizer
from tests.entrypoints.server.test_admission import error_of, in_process
from tests.entrypoints.server.conftest import model_context

TEXT = "def add(a, b):\n    return a + b  # héllo 🙂<|endoftext|>"


@pytest.fixture(scope="module")
def engine(tiny_codegen_dir):
    return LLMEngine(str(tiny_codegen_dir), dtype="float32", num_kv_blocks=64)


def post(app, *requests: tuple[str, object]) -> list:
    """POST each (path, body) in turn to an in-process app; a bytes body goes as it is."""
    async def main():
        async with in_process(app) as client:
            return [await client.post(path, content=body if isinstance(body, bytes)
                                      else json.dumps(body),
                                      headers={"content-type": "application/json"})
                    for path, body in requests]
    return asyncio.run(main())


def test_tokenize_has_vllm_shape_and_the_engine_ids(engine, tiny_codegen_dir):
    (plain, with_strs) = post(build_app(AsyncLLM(engine)), ("/tokenize", {"prompt": TEXT}),
                              ("/tokenize", {"prompt": TEXT, "return_token_strs": True}))
    assert plain.status_code == 200, plain.text
    body = plain.json()
    ids = engine.tokenize(TEXT)["prompt_token_ids"]
    assert body == {"count": len(ids), "max_model_len": model_context(tiny_codegen_dir),
                    "tokens": ids}
    assert with_strs.json()["token_strs"] == [engine.tokenizer.id_to_token(i) for i in ids]
    assert with_strs.json()["tokens"] == ids


def test_detokenize_round_trips_special_tokens_and_unicode(engine):
    app = build_app(AsyncLLM(engine))
    ids = engine.tokenizer.encode(TEXT)
    (response, empty) = post(app, ("/detokenize", {"tokens": ids}), ("/detokenize", {"tokens": []}))
    assert response.status_code == 200, response.text
    assert response.json() == {"prompt": TEXT}
    assert empty.json() == {"prompt": ""}


def test_add_special_tokens_follows_the_tokenizer(engine, tiny_codegen_dir, tmp_path):
    # A tokenizer whose post-processor puts a BOS first: added by default (vLLM's), not on false.
    folder = tmp_path / "bos"
    shutil.copytree(tiny_codegen_dir, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
    spec["post_processor"] = {
        "type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = Tokenizer(folder)
    handler = TokenizationHandler(tokenizer, ServedModels(engine))
    plain = tokenizer.encode("def f")
    added = asyncio.run(handler.tokenize(TokenizeRequest(prompt="def f")))["tokens"]
    kept = asyncio.run(handler.tokenize(TokenizeRequest(prompt="def f", add_special_tokens=False)))
    assert added == [0, *plain] and kept["tokens"] == plain


def test_tokenizing_runs_off_the_event_loop(engine, monkeypatch):
    threads, real_encode = [], engine.tokenizer.encode

    def spy(*args, **kwargs):
        threads.append((threading.current_thread(), kwargs.get("release_gil")))
        return real_encode(*args, **kwargs)
    monkeypatch.setattr(engine.tokenizer, "encode", spy)
    (response,) = post(build_app(AsyncLLM(engine)), ("/tokenize", {"prompt": "x = 1"}))
    assert response.status_code == 200
    (thread, release_gil), = threads
    assert thread is not threading.main_thread() and release_gil is True


def test_a_text_too_long_for_the_context_is_refused_untokenised(engine, tiny_codegen_dir,
                                                                monkeypatch):
    context = model_context(tiny_codegen_dir)
    calls = []
    monkeypatch.setattr(engine.tokenizer, "encode", lambda *a, **k: calls.append(a) or [])
    (response,) = post(build_app(AsyncLLM(engine)), ("/tokenize", {"prompt": "x" * 10 ** 6}))
    error = error_of(response, 400)
    assert error["param"] == "prompt" and error["code"] == "context_length_exceeded"
    assert f"context of {context} tokens" in error["message"] and calls == []


def test_a_text_over_the_context_after_tokenising_is_400(engine, tiny_codegen_dir):
    # Characters outside the tiny vocabulary cost several byte tokens each: the character-count
    # bound lets the text through, its token count does not.
    context = model_context(tiny_codegen_dir)
    text = "ᚠ" * context
    assert engine.tokenizer.min_num_tokens(text) <= context < len(engine.tokenizer.encode(text))
    (response,) = post(build_app(AsyncLLM(engine)), ("/tokenize", {"prompt": text}))
    error = error_of(response, 400)
    assert error["code"] == "context_length_exceeded"
    assert f"{len(engine.tokenizer.encode(text))} tokens" in error["message"]


HOSTILE = [
    ("/tokenize", {"prompt": 5}, "prompt"),
    ("/tokenize", {"prompt": ["def"]}, "prompt"),
    ("/tokenize", {"prompt": None}, "prompt"),
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "x", "add_special_tokens": "yes"}, "add_special_tokens"),
    ("/tokenize", {"prompt": "x", "add_special_tokens": 1}, "add_special_tokens"),
    ("/tokenize", {"prompt": "x", "return_token_strs": [True]}, "return_token_strs"),
    ("/tokenize", {"prompt": "x", "model": 3}, "model"),
    ("/tokenize", b'{"prompt": "\\ud800 lone surrogate"}', "prompt"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": [1, 10 ** 30]}, "tokens"),
    ("/detokenize", {"tokens": "1 2 3"}, "tokens"),
    ("/detokenize", {"tokens": [1, "2"]}, "tokens"),
    ("/detokenize", {"tokens": [1, True]}, "tokens"),
    ("/detokenize", {"tokens": [1.0]}, "tokens"),
    ("/detokenize", {"tokens": [[1]]}, "tokens"),
    ("/detokenize", {"tokens": None}, "tokens"),
    ("/detokenize", {"prompt": "x"}, "tokens"),
    ("/detokenize", b'{"tokens": [1e999]}', "tokens"),
    ("/detokenize", b"[1, 2]", None),
    ("/tokenize", b"{not json", None),
    ("/tokenize", b"", None),
]


@pytest.mark.parametrize("path, body, param", HOSTILE)
def test_hostile_bodies_are_400_and_harm_no_one(engine, path, body, param):
    bad, good = post(build_app(AsyncLLM(engine)), (path, body), ("/tokenize", {"prompt": "x"}))
    assert error_of(bad, 400)["param"] == param
    assert good.status_code == 200 and good.json()["count"] == len(engine.tokenizer.encode("x"))


def test_ids_out_of_the_vocabulary_are_400(engine):
    vocab = len(engine.tokenizer)
    (top, over) = post(build_app(AsyncLLM(engine)), ("/detokenize", {"tokens": [vocab - 1]}),
                       ("/detokenize", {"tokens": [0, vocab]}))
    assert top.status_code == 200
    error = error_of(over, 400)
    assert error["param"] == "tokens" and f"[0, {vocab})" in error["message"]


def test_more_ids_than_the_context_holds_are_400(engine, tiny_codegen_dir):
    context = model_context(tiny_codegen_dir)
    (fits, over) = post(build_app(AsyncLLM(engine)), ("/detokenize", {"tokens": [1] * context}),
                        ("/detokenize", {"tokens": [1] * (context + 1)}))
    assert fits.status_code == 200
    error = error_of(over, 400)
    assert error["param"] == "tokens" and str(context) in error["message"]


def test_huge_bodies_are_413(engine):
    app = build_app(AsyncLLM(engine), max_body_bytes=1000)
    for response in post(app, ("/tokenize", {"prompt": "x" * 2000}),
                         ("/detokenize", {"tokens": [1] * 1000})):
        error_of(response, 413)
