"""The unbiased pass@k estimator against values worked out by hand, and HumanEval helpers."""
import math
import random

import pytest

from engine.tools.humaneval import (PRESETS, get_preset, mean_pass_at_k, pass_at_k, read_problems,
                              set_prompt_builder, truncate_completion)


@pytest.mark.parametrize("n, c, k, expected", [
    (10, 3, 1, 3 / 10),            # 1 - C(7,1)/C(10,1)
    (10, 3, 2, 1 - 21 / 45),       # 1 - C(7,2)/C(10,2)
    (4, 2, 2, 5 / 6),              # 1 - C(2,2)/C(4,2)
    (200, 1, 100, 0.5),            # 1 - C(199,100)/C(200,100) = 1 - 100/200
    (5, 0, 3, 0.0),
    (5, 5, 1, 1.0),
    (5, 3, 3, 1.0),                # fewer than k wrong samples: some draw is always right
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_pass_at_k_matches_binomial_formula():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 300)
        c, k = rng.randint(0, n), rng.randint(1, n)
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)


def test_mean_pass_at_k():
    assert mean_pass_at_k([(10, 3), (4, 2)], 2) == pytest.approx((1 - 21 / 45 + 5 / 6) / 2)


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_truncate_completion_at_standard_stops():
    body = "    return x + 1"
    for tail in ("\nclass A:", "\ndef g():", "\n# comment", "\n@decorator", "\nprint(f(1))",
                 "\nif __name__ == '__main__':", "<|endoftext|>junk"):
        assert truncate_completion(body + tail + "\n    more") == body
    # indented ifs, comments and prints inside the body are kept
    inner = "    if x:\n        # why\n        print(x)\n    return x\n"
    assert truncate_completion(inner) == inner


def test_read_problems_from_package_data():
    problems = read_problems()
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0"
    assert {"prompt", "canonical_solution", "test", "entry_point"} <= problems[0].keys()
    assert [p["task_id"] for p in read_problems(limit=3)] == [f"HumanEval/{i}" for i in range(3)]
    with pytest.raises(ValueError):
        read_problems(limit=0)


def test_presets_follow_the_published_protocols():
    assert get_preset("pycodegpt").runs() == [(0.2, (1, 10, 100))]
    pycodegpt = get_preset("pycodegpt")
    assert (pycodegpt.n, pycodegpt.top_p, pycodegpt.max_tokens) == (100, 0.95, 100)
    assert get_preset("codegen").runs() == [(0.2, (1,)), (0.6, (10,)), (0.8, (100,))]
    codeclm = get_preset("codeclm")
    assert (codeclm.n, codeclm.temperature, codeclm.top_p) == (200, 0.95, 0.8)
    with pytest.raises(ValueError, match="preset"):
        get_preset("nope")


def test_prompt_builder_hook():
    original = PRESETS["codeclm"]
    problem = {"prompt": "def f():\n"}
    try:
        assert get_preset("pycodegpt").build_prompt(problem) == "def f():\n"  # plain presets: as is
        set_prompt_builder("codeclm", lambda p: {"segments": [("code", p["prompt"])]})
        assert get_preset("codeclm").build_prompt(problem) == {"segments": [("code", "def f():\n")]}
        assert get_preset("codeclm").temperature == 0.95  # sampling parameters kept
    finally:
        PRESETS["codeclm"] = original
