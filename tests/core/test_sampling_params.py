import pytest

from engine import SamplingParams


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(n=0), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(min_p=2.0), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(presence_penalty=3.0), "presence_penalty"),
    (dict(frequency_penalty=-3.0), "frequency_penalty"),
    (dict(logprobs=-1), "logprobs"),
    (dict(prompt_logprobs=-1), "prompt_logprobs"),
    (dict(prompt_logprobs=21), "prompt_logprobs"),
    (dict(prompt_logprobs=True), "prompt_logprobs"),
    (dict(prompt_logprobs=1.0), "prompt_logprobs"),
    (dict(stop=[""]), "stop"),
    (dict(stop=5), "stop"),
    (dict(stop_token_ids=["a"]), "stop_token_ids"),
    (dict(max_tokens="3"), "max_tokens"),
])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_defaults_and_normalisation():
    p = SamplingParams(top_k=-1, stop="\n\n")
    assert p.top_k == 0 and p.stop_strings == ["\n\n"] and not p.greedy
    assert SamplingParams(temperature=0).greedy


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kwargs, field", [
    *[(dict(temperature=v), "temperature") for v in (NAN, INF, 1e39, 10 ** 400, True)],
    *[(dict(repetition_penalty=v), "repetition_penalty") for v in (1e-300, 1e-3, 1e300, NAN, INF)],
    *[(dict(top_p=v), "top_p") for v in (NAN, INF)],
    *[(dict(min_p=v), "min_p") for v in (NAN, -INF)],
    *[(dict(presence_penalty=v), "presence_penalty") for v in (NAN, INF, "1")],
    *[(dict(frequency_penalty=v), "frequency_penalty") for v in (NAN, -INF)],
    *[(dict(ignore_eos=v), "ignore_eos") for v in ("yes", 1, None)],
    *[(dict(n=v), "n") for v in (10 ** 20, True, 2.0)],
    *[(dict(max_tokens=v), "max_tokens") for v in (10 ** 20, 2.5, False)],
    *[(dict(seed=v), "seed") for v in (10 ** 20, -10 ** 20, 1.5)],
    *[(dict(logprobs=v), "logprobs") for v in (10 ** 20, True, 1.0)],
    *[(dict(top_k=v), "top_k") for v in (1.5, True, -10 ** 20)],
    (dict(stop_token_ids=[True]), "stop_token_ids"),
])
def test_poison_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_tiny_temperature_is_greedy_and_huge_top_k_is_all():
    assert SamplingParams(temperature=1e-300).greedy and SamplingParams(temperature=9e-6).greedy
    assert not SamplingParams(temperature=1e-5).greedy
    assert SamplingParams(top_k=10 ** 20).top_k == 10 ** 20  # the sampler clamps it to the vocab
    assert SamplingParams(seed=2 ** 63 - 1, repetition_penalty=100, temperature=1e30).seed == 2 ** 63 - 1
