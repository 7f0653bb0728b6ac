"""A request that makes an engine step fail is aborted alone: the others get their own tokens."""
import random

import pytest

import engine.worker.model_runner
from engine import LLM
from engine.core.llm_engine import LLMEngine
from engine.core.sampling_params import SamplingParams
from engine.worker.sampler import sample

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
SEEDED = SamplingParams(n=2, temperature=0.9, seed=7, max_tokens=10, ignore_eos=True)
SCORED = SamplingParams(prompt_logprobs=2, temperature=0, max_tokens=10, ignore_eos=True)
MARK = 7  # a token only the poison's prompt holds, to spot it in the forward pass


@pytest.fixture(scope="module")
def llm_engine(tiny_codegen_dir):
    return LLMEngine(str(tiny_codegen_dir), dtype="float32")


def survivors(vocab: int) -> dict:
    rng = random.Random(5)
    prompts = [[rng.randrange(MARK + 1, vocab) for _ in range(rng.randint(3, 40))] for _ in range(8)]
    kinds = {3: SEEDED, 5: SCORED}
    return {f"r{i}": (ids, kinds.get(i, GREEDY)) for i, ids in enumerate(prompts)}


def run(eng: LLMEngine, requests: dict, setup=None) -> dict:
    for rid, (prompt, params) in requests.items():
        eng.add_request(rid, prompt, params)
    if setup is not None:
        setup(eng)
    finals = {}
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                finals[out.request_id] = out
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
    return finals


def tokens(finals: dict) -> dict:
    """The tokens of every sample, and the prompt logprobs, of each request."""
    return {rid: ([c.token_ids for c in out.outputs], out.prompt_logprobs)
            for rid, out in finals.items()}


class BrokenDetokenizer:
    def add(self, token):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "broken detokenizer")


def poison_sampler(monkeypatch, after: int):
    def fake(logits, seqs, row_stats):
        if any(s.request.request_id == "poison" and s.num_output_tokens >= after for s in seqs):
            raise RuntimeError("poisoned sampler")
        return sample(logits, seqs, row_stats)
    monkeypatch.setattr(engine.worker.model_runner, "sample", fake)


def poison_forward(eng: LLMEngine, monkeypatch):
    real_forward = eng.runner.model.forward

    def forward(ids, *args):
        if bool((ids == MARK).any()):
            raise RuntimeError("poisoned forward")
        return real_forward(ids, *args)
    monkeypatch.setattr(eng.runner.model, "forward", forward)


def poison_nan(eng: LLMEngine):
    eng.requests["poison"].params.temperature = float("nan")  # past validation, as a bug could


def poison_detokenizer(eng: LLMEngine):
    eng.requests["poison"].seqs[0].detokenizer = BrokenDetokenizer()


@pytest.mark.parametrize("how", ["sampler at prefill", "sampler at decode", "forward", "nan",
                                 "detokenizer"])
def test_failing_request_leaves_the_others_alone(llm_engine, monkeypatch, how):
    requests = survivors(len(llm_engine.tokenizer))
    clean = tokens(run(llm_engine, requests))
    setup = None
    if how.startswith("sampler"):
        poison_sampler(monkeypatch, after=0 if how.endswith("prefill") else 4)
    elif how == "forward":
        poison_forward(llm_engine, monkeypatch)
    else:
        setup = poison_nan if how == "nan" else poison_detokenizer
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    finals = run(llm_engine, {"poison": ([MARK, MARK + 1, MARK + 2], params), **requests}, setup)
    poison = finals.pop("poison")
    assert poison.finished and poison.error is not None
    assert tokens(finals) == clean
    assert all(out.error is None for out in finals.values())
    assert tokens(run(llm_engine, requests)) == clean  # and the engine goes on as before


def test_llm_generate_raises_for_a_failing_request(tiny_codegen_dir):
    bad = SamplingParams(max_tokens=4)
    bad.temperature = float("nan")  # past validation, as a bug could
    llm = LLM(str(tiny_codegen_dir), dtype="float32")
    with pytest.raises(RuntimeError, match="failed"):
        llm.generate(["def f():", "def g():"], [GREEDY, bad], use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks
