"""A prompt is checked before it costs anything: one that cannot fit the context is refused
without being tokenised, and text that is not valid Unicode is a ValueError naming the prompt."""

import contextlib

import pytest
from tokenizers import AddedToken, Tokenizer as HFTokenizer, normalizers, pre_tokenizers

from engine import LLM, SamplingParams
from engine.core.llm_engine import LLMEngine
from engine.tokenizer import Tokenizer
from tests.checkpoints import CORPUS

CODE = "def f(x):\n    return x\n"


@pytest.fixture(scope="module")
def llm(tiny_codegen_dir):
    return LLM(str(tiny_codegen_dir), dtype="float32")


def test_min_num_tokens_is_a_lower_bound(tiny_codegen_dir):
    tok = Tokenizer(tiny_codegen_dir)
    assert tok.max_token_chars == max(len(t) for t in tok.vocab)
    for text in [*CORPUS, " " * 5000, "\n\t" * 999, "日本語🙂" * 50, "a", "".join(CORPUS) * 9]:
        assert 0 < tok.min_num_tokens(text) <= len(tok.encode(text)), text[:40]
    assert tok.min_num_tokens("") == 0


@pytest.mark.parametrize("change", ["normalizer", "whitespace", "lstrip"])
def test_no_bound_when_a_token_may_cover_more_than_its_string(tiny_codegen_dir, tmp_path, change):
    hf = HFTokenizer.from_file(str(tiny_codegen_dir / "tokenizer.json"))
    if change == "normalizer":   # strips the text: a prompt of spaces may be no tokens at all
        hf.normalizer = normalizers.Strip()
    elif change == "whitespace":   # drops whitespace between words
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
    else:   # matches the whitespace before it too
        hf.add_special_tokens([AddedToken("<mask>", lstrip=True)])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer(tmp_path)
    assert tok.max_token_chars is None and tok.min_num_tokens(" " * 10 ** 6) == 0


def spy_on_encode(engine: LLMEngine, monkeypatch) -> list[int]:
    """Lengths of the texts engine.tokenizer.encode was asked for; a huge one is a failure."""
    lengths, real = [], engine.tokenizer.encode

    def encode(text, *args, **kwargs):
        lengths.append(len(text))
        assert len(text) < 10 ** 6, "tokenised a prompt that cannot fit the context"
        return real(text, *args, **kwargs)

    monkeypatch.setattr(engine.tokenizer, "encode", encode)
    return lengths


def test_prompt_too_long_for_the_context_is_refused_untokenised(llm, monkeypatch):
    engine = llm.engine
    lengths = spy_on_encode(engine, monkeypatch)
    huge = CODE * (15_000_000 // len(CODE))   # 15 MB
    half = huge[:len(huge) // 2]
    for prompt in (huge, {"segments": [("code", half), ("text", half)]}):
        with pytest.raises(ValueError, match=r"characters, so at least \d+ tokens.*context"):
            engine.add_request("huge", prompt, SamplingParams(max_tokens=4))
        with pytest.raises(ValueError, match="context"):
            llm.generate(prompt, SamplingParams(max_tokens=4))
    assert lengths == [] and not engine.has_unfinished_requests()
    # At the bound the characters alone do not rule it out, so it is tokenised (and measured).
    at_bound = huge[:engine.tokenizer.max_token_chars * engine.max_model_len]
    with contextlib.suppress(ValueError):
        engine.tokenize(at_bound, SamplingParams(max_tokens=4))
    assert lengths == [len(at_bound)]


def test_token_id_prompt_too_long_is_refused_before_its_ids_are_checked(llm):
    ids = [10 ** 9] * (10 * llm.engine.config.max_position_embeddings)   # bad ids, and too many
    with pytest.raises(ValueError, match=r"prompt \(\d+ tokens\).*context"):
        llm.engine.tokenize({"prompt_token_ids": ids})


def test_tokenize_result_is_accepted_as_is(llm, monkeypatch):
    tokens = llm.engine.tokenize({"segments": [("code", "def f(x):"), ("text", '"""doc"""')]})
    assert tokens["prompt"] == 'def f(x):"""doc"""'
    assert len(tokens["prompt_token_ids"]) == len(tokens["modality"]) and 1 in tokens["modality"]
    lengths = spy_on_encode(llm.engine, monkeypatch)
    out = llm.generate(tokens, SamplingParams(max_tokens=2, temperature=0))[0]
    assert lengths == [] and out.prompt == tokens["prompt"]
    assert out.prompt_token_ids == tokens["prompt_token_ids"]


@pytest.mark.parametrize("prompt", [
    "def f(\ud800):", ["def ok():", "x = '\udfff'"],
    {"segments": [("code", "def f():"), ("text", '"""\ud83d"""')]},
])
def test_lone_surrogate_is_a_value_error_naming_the_prompt(llm, prompt):
    with pytest.raises(ValueError, match=r"^prompt.* is not valid Unicode: lone surrogate U\+D"):
        llm.generate(prompt, SamplingParams(max_tokens=2))
    assert not llm.engine.has_unfinished_requests()
    assert llm.generate("def f():", SamplingParams(max_tokens=2))[0].outputs[0].token_ids


def test_tokenizer_names_invalid_text(llm):
    with pytest.raises(ValueError, match="text is not valid Unicode: lone surrogate U\\+D800 at "
                                         "character 2"):
        llm.get_tokenizer().encode("ab\ud800")
    with pytest.raises(TypeError):   # not a string at all: still a TypeError
        llm.get_tokenizer().encode(42)
