"""The sampler never overflows on a valid SamplingParams, and checks its rows before any draw."""
import pytest
import torch

from engine.core.sampling_params import SamplingParams
from engine.core.sequence import Request, Sequence
from engine.worker.sampler import sample


def make_seq(request_id: str, params: SamplingParams, seed: int = 0) -> Sequence:
    request = Request(request_id, None, [1, 2, 3], [0, 0, 0], params, 0)
    seq = Sequence(0, request, 0)
    seq.generator = torch.Generator().manual_seed(seed)
    return seq


def test_top_k_beyond_the_vocabulary_keeps_every_token():
    logits = torch.randn(1, 50)
    all_k = sample(logits, [make_seq("a", SamplingParams(top_k=0, seed=1), seed=1)])
    huge_k = sample(logits, [make_seq("b", SamplingParams(top_k=10 ** 20, seed=1), seed=1)])
    assert huge_k.token_ids == all_k.token_ids


def test_logprobs_beyond_the_vocabulary():
    result = sample(torch.randn(1, 8), [make_seq("a", SamplingParams(logprobs=20))])
    assert len(result.top_logprobs[0]) == 8


def test_non_finite_row_raises_naming_the_request_and_draws_nothing():
    ok = make_seq("ok", SamplingParams(temperature=0.8), seed=3)
    bad = make_seq("bad", SamplingParams())
    bad.request.params.temperature = float("nan")  # past validation, as a bug could
    state = ok.generator.get_state()
    with pytest.raises(FloatingPointError, match="bad"):
        sample(torch.randn(2, 50), [ok, bad])
    assert torch.equal(ok.generator.get_state(), state)
