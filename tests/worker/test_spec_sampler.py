"""Verifying a point-mass draft (prompt lookup) is lossless: over thousands of seeded draws from a
tiny model's logits the first emitted token follows the exact target distribution, the draft is
accepted with its probability there, and the token after an accepted draft follows the target's
next distribution; for temperature, top_k, top_p and min_p. Each draw is the one a plain row makes."""
import pytest
import torch

from engine.core.sampling_params import SamplingParams
from engine.worker.sampler import _draw, sample, verify
from tests.checkpoints import hf_model
from tests.worker.test_sampler import make_seq
from tests.worker.test_sampling_order import reference_keep, total_variation

NUM_DRAWS = 4000


@pytest.fixture(scope="module")
def rows(tiny_codegen_dir):
    """transformers' logits after a prompt and after the prompt + d, d its second most likely
    next token (a draft that is sometimes right), and d. A random tiny model is close to uniform
    over its 320 ids; its logits are sharpened (x 5, as a trained model's) so that a few thousand
    draws resolve the distribution."""
    model = hf_model(tiny_codegen_dir)
    prompt = [5, 17, 33, 8, 90, 41]
    with torch.no_grad():
        first = model(torch.tensor([prompt])).logits[0, -1, :320]
        draft = int(first.topk(2).indices[1])  # sharpening keeps the order
        second = model(torch.tensor([prompt + [draft]])).logits[0, -1, :320]
    return 5 * first.float(), 5 * second.float(), draft


def chi_square(counts: dict[int, int], expected: dict[int, float], total: int) -> tuple[float, int]:
    """Pearson's statistic over the expected support (cells of tiny mass merged) and its dof."""
    stat, rest_obs, rest_exp, cells = 0.0, 0, 0.0, 0
    for token, p in expected.items():
        if p * total < 5:
            rest_obs, rest_exp = rest_obs + counts.get(token, 0), rest_exp + p * total
            continue
        stat += (counts.get(token, 0) - p * total) ** 2 / (p * total)
        cells += 1
    if rest_exp > 0:
        stat += (rest_obs - rest_exp) ** 2 / rest_exp
        cells += 1
    return stat, max(cells - 1, 1)


@pytest.mark.parametrize("temperature, top_k, top_p, min_p", [
    (0.8, 0, 1.0, 0.0), (1.0, 5, 1.0, 0.0), (1.0, 0, 0.6, 0.0), (1.0, 0, 1.0, 0.1), (1.3, 10, 0.8, 0.05)])
def test_verified_draws_follow_the_target_distribution(rows, temperature, top_k, top_p, min_p):
    first, second, draft = rows
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            max_tokens=8, seed=0)
    seqs = [make_seq(f"r{i}", params, seed=i) for i in range(NUM_DRAWS)]
    logits = torch.stack([first, second]).repeat(NUM_DRAWS, 1)
    result, owners = verify(logits, seqs, [[draft]] * NUM_DRAWS)
    emitted: dict[int, list[int]] = {}
    for seq, token in zip(owners, result.token_ids):
        emitted.setdefault(id(seq), []).append(token)
    draws = list(emitted.values())
    assert all(len(d) == (2 if d[0] == draft else 1) for d in draws)
    p0 = reference_keep((first / temperature).tolist(), top_k, top_p, min_p)
    p1 = reference_keep((second / temperature).tolist(), top_k, top_p, min_p)
    counts0: dict[int, int] = {}
    for d in draws:
        counts0[d[0]] = counts0.get(d[0], 0) + 1
    assert set(counts0) <= set(p0)
    assert total_variation({t: c / NUM_DRAWS for t, c in counts0.items()}, p0) < 0.06
    stat, dof = chi_square(counts0, p0, NUM_DRAWS)
    assert stat < dof + 6 * (2 * dof) ** 0.5, (stat, dof)  # far beyond the 99.99th percentile
    accepted = [d[1] for d in draws if len(d) == 2]
    assert abs(len(accepted) / NUM_DRAWS - p0.get(draft, 0.0)) < 0.03
    if len(accepted) >= 500:
        counts1: dict[int, int] = {}
        for t in accepted:
            counts1[t] = counts1.get(t, 0) + 1
        observed = {t: c / len(accepted) for t, c in counts1.items()}
        assert set(observed) <= set(p1)
        assert total_variation(observed, p1) < 0.1


def test_a_verification_row_draws_what_a_plain_row_draws(rows):
    """The same seed gives the same first token with or without a draft, and the exponential race
    is torch.multinomial's draw."""
    first, second, draft = rows
    probs = first.softmax(-1)
    for seed in range(20):
        a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert _draw(probs, a) == int(torch.multinomial(probs, 1, generator=b))
    params = SamplingParams(temperature=1.0, seed=3)
    for seed in range(50):
        plain = sample(first[None], [make_seq("a", params, seed=seed)])
        spec, _ = verify(torch.stack([first, second]), [make_seq("b", params, seed=seed)], [[draft]])
        assert spec.token_ids[0] == plain.token_ids[0]
        assert spec.logprobs[0] == pytest.approx(plain.logprobs[0])


def test_greedy_accepts_while_the_argmax_equals_the_draft(rows):
    first, second, _ = rows
    best0, best1 = int(first.argmax()), int(second.argmax())
    seq = make_seq("g", SamplingParams(temperature=0))
    logits = torch.stack([first, second, second])
    result, owners = verify(logits, [seq], [[best0, best1 + 1]])
    assert result.token_ids == [best0, best1] and owners == [seq, seq]
