"""What the server says about itself, as vLLM's does: the model names it answers to (every alias of
--served-model-name), GET /version, and an OpenAPI page whose request schemas are the ones the
routes accept."""

from __future__ import annotations

import asyncio
import importlib.metadata

import httpx
import pytest

from engine.core.llm_engine import LLMEngine
from engine.entrypoints.async_engine import AsyncLLM
from engine.entrypoints.server import build_app
from engine.entrypoints.server.protocol import CompletionRequest, DetokenizeRequest, TokenizeRequest
from tests.entrypoints.server.test_admission import error_of, in_process

ALIASES = ["alias-a", "org/alias-b"]


@pytest.fixture(scope="module")
def engine(tiny_codegen_dir):
    return LLMEngine(str(tiny_codegen_dir), dtype="float32", num_kv_blocks=64,
                     served_model_name=ALIASES)


def requests(app, *calls: tuple[str, str, dict | None]) -> list[httpx.Response]:
    """Each (method, path, JSON body) in turn against an in-process app."""
    async def main():
        async with in_process(app) as client:
            return [await client.request(method, path, json=body) for method, path, body in calls]
    return asyncio.run(main())


def test_models_lists_every_alias(engine, tiny_codegen_dir):
    (models,) = requests(build_app(AsyncLLM(engine)), ("GET", "/v1/models", None))
    cards = models.json()["data"]
    assert [card["id"] for card in cards] == ALIASES
    assert all(card["object"] == "model" and card["max_model_len"] == engine.config.max_position_embeddings
               for card in cards)


def test_requests_may_name_any_alias_or_none(engine):
    body = {"prompt": "def", "max_tokens": 2}
    answers = requests(build_app(AsyncLLM(engine)),
                       *[("POST", "/v1/completions", {**body, "model": name}) for name in ALIASES],
                       ("POST", "/v1/completions", body),
                       ("POST", "/tokenize", {"prompt": "def", "model": ALIASES[1]}),
                       ("POST", "/detokenize", {"tokens": [1], "model": ALIASES[0]}))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    # The answer names the model asked for; a request that names none gets the first name.
    assert [a.json()["model"] for a in answers[:3]] == [*ALIASES, ALIASES[0]]


@pytest.mark.parametrize("name", ["codegen-tiny-py", "alias", "ALIAS-A", "alias-a ", ""])
def test_another_name_is_404_model_not_found(engine, tiny_codegen_dir, name):
    # The checkpoint's own folder name is not served either once aliases are given, as in vLLM.
    answers = requests(build_app(AsyncLLM(engine)),
                       ("POST", "/v1/completions", {"prompt": "def", "model": name}),
                       ("POST", "/tokenize", {"prompt": "def", "model": name}),
                       ("POST", "/detokenize", {"tokens": [1], "model": name}),
                       ("POST", "/v1/completions", {"prompt": "def", "model": tiny_codegen_dir.name}))
    for answer in answers:
        error = error_of(answer, 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"


def test_default_name_is_the_model_argument_as_given(server, model_name, tiny_codegen_dir):
    # The shared server runs `serve --model DIR`: it answers to DIR as typed, as vLLM does.
    assert model_name == str(tiny_codegen_dir)


def test_version_is_the_package_version(engine):
    (answer,) = requests(build_app(AsyncLLM(engine)), ("GET", "/version", None))
    assert answer.json() == {"version": importlib.metadata.version("codeinfer")}


@pytest.mark.parametrize("path, schema", [("/v1/completions", CompletionRequest),
                                          ("/tokenize", TokenizeRequest),
                                          ("/detokenize", DetokenizeRequest)])
def test_openapi_describes_the_request_models(engine, path, schema):
    docs, document = requests(build_app(AsyncLLM(engine)), ("GET", "/docs", None),
                              ("GET", "/openapi.json", None))
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    body = document.json()["paths"][path]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    described = document.json()["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(described["properties"]) == set(schema.model_fields)
    required = {name for name, f in schema.model_fields.items() if f.is_required()}
    assert set(described.get("required", [])) == required
    # Each field's type as the model states it (a $ref into the same document stays resolvable).
    assert described["properties"] == schema.model_json_schema(
        ref_template="#/components/schemas/{model}")["properties"]
    for nested in str(described).split("'#/components/schemas/")[1:]:
        assert nested.split("'", 1)[0] in document.json()["components"]["schemas"]


def test_the_api_key_guards_the_model_routes_only(engine):
    open_paths = ["/version", "/health", "/openapi.json", "/docs"]
    keyed = [("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})]

    async def main():
        async with in_process(build_app(AsyncLLM(engine), api_key="k")) as client:
            opened = [await client.get(path) for path in open_paths]
            refused = [await client.post(path, json=body) for path, body in keyed]
            let_in = [await client.post(path, json=body, headers={"Authorization": "Bearer k"})
                      for path, body in keyed]
            return opened, refused, let_in

    opened, refused, let_in = asyncio.run(main())
    assert [a.status_code for a in opened] == [200] * len(open_paths)
    assert all(error_of(a, 401)["code"] == "invalid_api_key" for a in refused)
    assert [a.status_code for a in let_in] == [200] * len(keyed)
