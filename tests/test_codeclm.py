"""CodeCLM partial embedding separation end to end, against a transformers reference."""
import os
import pickle
from dataclasses import replace

import pytest
import torch

from engine import LLM, SamplingParams
from engine.codeclm import DUP, MAP_FILE, detect, linearised_to_source, read_replicated_tokens_map
from engine.core.block_manager import block_hash
from engine.core.llm_engine import LLMEngine
from engine.tokenizer import Tokenizer
from engine.tools.humaneval import generate_samples, get_preset
from engine.tools.humaneval.codeclm import humaneval_completion, humaneval_prompt
from tests.checkpoints import hf_model
from tests.codeclm_checkpoint import make_codeclm

MAX_TOKENS = 20
DOC = '\n    """Return the n-th Fibonacci number."""'
MIXED = {"segments": [("text", "<|beginoftext|>"), ("code", "def fib(n):\n    if n < 2:"),
                      ("text", "<comments>" + DOC + "<python>")]}
ALL_TEXT = "import os\nfor i in range(10):\n    print(i)"
LINEARISED = ("def add(a, b):<NEW_LINE><INDENT>if a:  <NEW_LINE><INDENT>[_DUP_]return a + b <NEW_LINE>"
              "<DEDENT>[_DUP_]return b<NEW_LINE><DEDENT><NEW_LINE>print(add(1, 2))")
SOURCE = "def add(a, b):\n    if a:\n        return a + b\n    return b\n\nprint(add(1, 2))"
PROBLEM = {"task_id": "Toy/0", "entry_point": "fib",
           "prompt": 'from typing import List\n\n\ndef fib(n: int) -> int:\n    """ Return the n-th\n'
                     '    Fibonacci number.\n    >>> fib(3)\n    2\n    """\n'}


@pytest.fixture(scope="module")
def clm_dir(tmp_path_factory):
    return make_codeclm(tmp_path_factory.mktemp("codeclm"))


@pytest.fixture(scope="module")
def clm_llm(clm_dir):
    return LLM(str(clm_dir), dtype="float32", block_size=8)


def _greedy(llm, prompts, max_tokens=MAX_TOKENS):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


@torch.no_grad()
def _reference(model, ids, mods, twins, remap=True, tops=None):
    """transformers greedy: code positions feed the twin id, text twins are masked.

    tops, if a list, receives each step's top-5 ids before the mask."""
    ids = [twins.get(i, i) if m and remap else i for i, m in zip(ids, mods)]
    n = len(ids)
    for _ in range(MAX_TOKENS):
        logits = model(torch.tensor([ids])).logits[0, -1]
        if tops is not None:
            tops.append(logits.topk(5).indices.tolist())
        logits[list(twins)] = float("-inf")
        ids.append(int(logits.argmax()))  # emitted ids are code: twins already, the rest unmapped
    return ids[n:]


def test_detects_twins_and_cross_checks_the_map(clm_dir, tiny_gptneo_dir):
    tok = Tokenizer(clm_dir)
    vocab = detect(clm_dir, tok, len(tok))
    assert vocab.twins == read_replicated_tokens_map(clm_dir / MAP_FILE)
    assert all(tok.id_to_token(c) == DUP + tok.id_to_token(t) for t, c in vocab.twins.items())
    remap, mask = vocab.remap, vocab.text_twin_mask
    assert remap.dtype == torch.int64 and remap.shape == mask.shape == (len(tok),)
    assert sorted(mask.nonzero()[:, 0].tolist()) == sorted(vocab.twins)
    moved = (remap != torch.arange(len(tok))).nonzero()[:, 0].tolist()
    assert {i: int(remap[i]) for i in moved} == vocab.twins
    assert vocab.eot_token_id == tok.token_to_id("<eot>")
    plain = LLMEngine(str(tiny_gptneo_dir), dtype="float32", num_kv_blocks=4)
    assert plain.codeclm is None and plain.generated_modality == 0
    assert torch.equal(plain.runner.remap, torch.arange(plain.config.vocab_size))


def test_greedy_matches_transformers(clm_dir, clm_llm):
    engine = clm_llm.engine
    assert engine.generated_modality == 1
    twins = engine.codeclm.twins
    prompts = [MIXED, ALL_TEXT]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=5)
    outs = [o.outputs[0] for o in clm_llm.generate(prompts, params, use_tqdm=False)]
    model = hf_model(clm_dir)
    unmasked_tops = []
    for prompt, out in zip(prompts, outs):
        _, ids, mods = engine._tokenize(prompt)
        assert out.token_ids == _reference(model, ids, mods, twins, tops=unmasked_tops)
        # a separated token is always emitted as its code twin: text twins are never candidates
        assert not any(set(step) & set(twins) for step in out.logprobs)
    assert set(outs[0].token_ids + outs[1].token_ids) & set(twins.values()), "twins were emitted"
    # The reference is discriminative: without the mask text twins compete, without the remap
    # the code positions of the prompt read other rows and the tokens differ.
    assert any(set(top) & set(twins) for top in unmasked_tops)
    _, ids, mods = engine._tokenize(MIXED)
    assert outs[0].token_ids != _reference(model, ids, mods, twins, remap=False)


def test_linearised_code_decoding(clm_llm):
    assert linearised_to_source(LINEARISED) == SOURCE
    engine = clm_llm.engine
    tok = engine.tokenizer
    ids = tok.encode(LINEARISED) + [tok.token_to_id("<eot>")]
    assert tok.token_to_id("[_DUP_]return") in ids and tok.token_to_id("<NEW_LINE>") in ids
    detok = engine.codeclm.detokenizer(tok)
    assert "".join(detok.add(i) for i in ids) == SOURCE  # streamed one token at a time
    # The engine's text of generated code is the same decoding of the emitted ids.
    out = clm_llm.generate(MIXED, SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                                                 ignore_eos=True), use_tqdm=False)[0].outputs[0]
    replay = engine.codeclm.detokenizer(tok)
    assert out.text == "".join(replay.add(i) for i in out.token_ids) and DUP not in out.text


def test_unpickler_refuses_callables(tmp_path, clm_dir):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for payload in (Evil(), {1: Evil()}):
        (tmp_path / MAP_FILE).write_bytes(pickle.dumps(payload))
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            read_replicated_tokens_map(tmp_path / MAP_FILE)
    tok = Tokenizer(clm_dir)
    with pytest.raises(pickle.UnpicklingError):  # a checkpoint carrying it fails to load
        detect(tmp_path, tok, len(tok))
    assert not marker.exists()
    for payload in ([1, 2], {"a": 1}, {1: 2.0}, {True: 2}):
        (tmp_path / MAP_FILE).write_bytes(pickle.dumps(payload))
        with pytest.raises(ValueError, match="dict of int"):
            read_replicated_tokens_map(tmp_path / MAP_FILE)
    twins = detect(clm_dir, tok, len(tok)).twins
    (tmp_path / MAP_FILE).write_bytes(pickle.dumps({**twins, 5: 6}))
    with pytest.raises(ValueError, match="disagrees"):
        detect(tmp_path, tok, len(tok))


def test_prefix_cache_never_mixes_modalities(clm_dir, clm_llm):
    tok = clm_llm.engine.tokenizer
    ids = tok.encode("for i in range(10):\n    if i: print(i)\nwhile x: x = x - 1\n")
    twins = clm_llm.engine.codeclm.twins
    assert sum(i in twins for i in ids[:8]) >= 2  # the first block holds separated tokens
    n = len(ids)
    num_cached = (n - 1) // 8 * 8  # prompt tokens in full blocks (one is always left to compute)
    assert num_cached >= 24
    code = {"prompt_token_ids": ids, "modality": [1] * n}
    text = {"prompt_token_ids": ids, "modality": [0] * n}
    head_code = {"prompt_token_ids": ids, "modality": [1] * 16 + [0] * (n - 16)}
    uncached = LLM(str(clm_dir), dtype="float32", block_size=8, enable_prefix_caching=False)
    want = dict(zip(("code", "text", "head_code"), _greedy(uncached, [code, text, head_code])))
    assert want["code"] != want["text"]  # mixing their blocks would change the tokens
    assert block_hash(b"", ids[:8], [0] * 8) != block_hash(b"", ids[:8], [1] * 8)

    engine = clm_llm.engine
    hits = lambda: engine.get_stats()["prefix_cache_hits"]  # noqa: E731
    assert _greedy(clm_llm, [code]) == [want["code"]]
    before = hits()
    assert _greedy(clm_llm, [text]) == [want["text"]]
    assert hits() == before  # same ids, other modality: no block reused
    assert _greedy(clm_llm, [head_code]) == [want["head_code"]]
    assert hits() == before + 16  # only the two code blocks it shares with `code`
    assert _greedy(clm_llm, [text]) == [want["text"]]  # now text blocks are cached too
    assert hits() == before + 16 + num_cached


def test_humaneval_prompt_layout(clm_llm):
    prompt = humaneval_prompt(PROBLEM)
    tok = clm_llm.engine.tokenizer
    _, ids, mods = clm_llm.engine._tokenize(prompt)
    signature = "from typing import List\n\n\ndef fib(n: int) -> int:"
    sig_ids = tok.encode(signature)
    assert prompt["segments"][1] == ("code", signature)
    assert ids[0] == tok.token_to_id("<|beginoftext|>") and ids[-1] == tok.token_to_id("<python>")
    assert ids[1:1 + len(sig_ids)] == sig_ids and mods[1:1 + len(sig_ids)] == [1] * len(sig_ids)
    rest = ids[1 + len(sig_ids):]
    assert rest[0] == tok.token_to_id("<comments>") and sum(mods) == len(sig_ids)
    assert tok.decode(rest[1:-1]) == PROBLEM["prompt"][len(signature):].rstrip()  # "\n    \"\"\" ..."
    # decoded completions: engine text (already source) and raw linearised text
    assert humaneval_completion("\n    return 1\n") == "    return 1\n"
    assert humaneval_completion("<NEW_LINE><INDENT>[_DUP_]return 1<NEW_LINE><DEDENT><eot>x") == \
        "    return 1\n"
    preset = get_preset("codeclm")
    assert preset.prompt_builder is humaneval_prompt
    assert preset.completion_postprocess is humaneval_completion
    # generation stops on <eot>; the eval path runs end to end
    assert clm_llm.engine.tokenizer.eos_token_id == tok.token_to_id("<eot>")
    samples = generate_samples(clm_llm, [PROBLEM], replace(preset, n=2, max_tokens=6),
                               temperature=0.95, seed=1, show_progress=False)
    assert len(samples) == 2 and all(DUP not in s["completion"] for s in samples)


@pytest.mark.parametrize("data", [b"", b"garbage\x00\x01", b"\x80\x04]\x94."],
                         ids=["empty", "garbage", "a list"])
def test_bad_replicated_tokens_map_is_a_value_error(tmp_path, data):
    from engine.codeclm import read_replicated_tokens_map
    path = tmp_path / "replicated_tokens_map.pkl"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="replicated_tokens_map.pkl"):
        read_replicated_tokens_map(path)
