"""top_k, top_p and min_p keep what transformers' warpers keep: top_k, then top_p over the
renormalised top-k distribution, then min_p (SamplingParams documents the order). Checked as exact
masks on fixed logits rows and as the distribution of many seeded draws from a tiny model."""
import math
from collections import Counter

import pytest
import torch

from engine import LLM, SamplingParams
from engine.worker.sampler import _filter
from tests.checkpoints import hf_model

# (top_k, top_p, min_p): each filter alone, each pair, all three.
COMBOS = [(10, 1.0, 0.0), (0, 0.3, 0.0), (0, 1.0, 0.3), (10, 0.6, 0.0), (10, 1.0, 0.3),
          (0, 0.3, 0.2), (10, 0.6, 0.3)]


def reference_keep(logits: list[float], top_k: int, top_p: float, min_p: float,
                   top_p_over_all: bool = False) -> dict[int, float]:
    """The surviving tokens and their renormalised probabilities, in plain Python.
    top_p_over_all: the old, wrong rule (top_p over the whole distribution, not the top-k one)."""
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    kept = order if top_k <= 0 else [i for i in order if logits[i] >= logits[order[top_k - 1]]]
    mass_of = order if top_p_over_all else kept
    z = sum(math.exp(logits[i] - logits[order[0]]) for i in mass_of)
    probs = {i: math.exp(logits[i] - logits[order[0]]) / z for i in mass_of}
    nucleus, mass = [], 0.0
    for i in kept:  # a token goes when the more likely ones already hold top_p
        if nucleus and top_p < 1 and mass >= top_p:
            break
        nucleus.append(i)
        mass += probs[i]
    best = probs[nucleus[0]]
    final = [i for i in nucleus if probs[i] >= min_p * best]
    total = sum(probs[i] for i in final)
    return {i: probs[i] / total for i in final}


def transformers_keep(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> set[int]:
    from transformers import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    scores, ids = logits[None].clone(), torch.zeros(1, 1, dtype=torch.long)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    if min_p:
        scores = MinPLogitsWarper(min_p)(ids, scores)
    return set(torch.isfinite(scores[0]).nonzero()[:, 0].tolist())


def engine_keep(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> set[int]:
    out = _filter(logits[None], torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))
    return set(torch.isfinite(out[0]).nonzero()[:, 0].tolist())


@pytest.fixture(scope="module")
def rows():
    """Fixed rows: a flat one (the top 10 hold little mass, as in a tiny random model) and a
    peaked one; random values, so no ties decide a boundary."""
    gen = torch.Generator().manual_seed(7)
    flat = torch.randn(300, generator=gen) * 0.6
    peaked = torch.randn(300, generator=gen) * 2.5
    return [flat, peaked]


@pytest.mark.parametrize("top_k, top_p, min_p", COMBOS)
def test_masks_equal_the_reference_and_transformers(rows, top_k, top_p, min_p):
    for row in rows:
        expected = set(reference_keep(row.tolist(), top_k, top_p, min_p))
        assert engine_keep(row, top_k, top_p, min_p) == expected
        assert transformers_keep(row, top_k, top_p, min_p) == expected


def test_top_p_is_over_the_renormalised_top_k(rows):
    flat = rows[0]
    right = reference_keep(flat.tolist(), 10, 0.6, 0.0)
    wrong = reference_keep(flat.tolist(), 10, 0.6, 0.0, top_p_over_all=True)
    assert len(right) < len(wrong) == 10  # over the whole distribution, 0.6 keeps all ten
    assert engine_keep(flat, 10, 0.6, 0.0) == set(right)


def test_ties_with_the_kth_token_stay():
    logits = torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0])
    assert engine_keep(logits, 2, 1.0, 0.0) == {0, 1, 2, 3} == transformers_keep(logits, 2, 1.0, 0.0)


def test_the_most_likely_token_always_survives():
    logits = torch.tensor([5.0, 1.0, 0.0])
    assert engine_keep(logits, 1, 1e-9, 1.0) == {0}


NUM_REQUESTS, SAMPLES_PER_REQUEST = 10, 200   # 2000 seeded draws per combination


@pytest.fixture(scope="module")
def model_row(tiny_codegen_dir):
    """The engine, a prompt, and transformers' fp32 logits of its next token (sampleable ids)."""
    llm = LLM(str(tiny_codegen_dir), dtype="float32", attention_backend="torch")
    prompt_ids = llm.get_tokenizer().encode("x = ", "prompt")
    with torch.no_grad():
        logits = hf_model(tiny_codegen_dir)(torch.tensor([prompt_ids])).logits[0, -1]
    return llm, prompt_ids, logits[:len(llm.get_tokenizer())].tolist()


def total_variation(p: dict[int, float], q: dict[int, float]) -> float:
    return 0.5 * sum(abs(p.get(t, 0.0) - q.get(t, 0.0)) for t in set(p) | set(q))


@pytest.mark.parametrize("top_k, top_p, min_p", COMBOS)
def test_draws_follow_the_reference_distribution(model_row, top_k, top_p, min_p):
    llm, prompt_ids, logits = model_row
    expected = reference_keep(logits, top_k, top_p, min_p)
    params = [SamplingParams(n=SAMPLES_PER_REQUEST, temperature=1.0, top_k=top_k, top_p=top_p,
                             min_p=min_p, max_tokens=1, seed=1000 * seed, ignore_eos=True)
              for seed in range(NUM_REQUESTS)]
    outputs = llm.generate(prompt_token_ids=[prompt_ids] * NUM_REQUESTS, sampling_params=params)
    draws = Counter(c.token_ids[0] for o in outputs for c in o.outputs)
    num_draws = NUM_REQUESTS * SAMPLES_PER_REQUEST
    assert set(draws) <= set(expected)
    observed = {t: count / num_draws for t, count in draws.items()}
    # 2000 draws over at most ~20 tokens: sampling noise alone gives a distance of ~0.03.
    assert total_variation(observed, expected) < 0.08
    if (top_k, top_p) == (10, 0.6):  # the old rule would be far off: this check can tell
        wrong = reference_keep(logits, top_k, top_p, min_p, top_p_over_all=True)
        assert total_variation(wrong, expected) > 0.2
