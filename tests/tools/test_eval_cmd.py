"""`codeinfer eval humaneval` with a model: one LLM.generate call per temperature over all
problems, completions truncated at the stops, scored per run; and the real engine end to end."""
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from engine.tools.humaneval import evaluate, get_preset, read_problems
from tests.tools.test_humaneval_exec import _run_cli


class FakeLLM:
    """Answers every prompt with n completions: `right` canonical ones, then wrong ones."""

    def __init__(self, problems, right):
        self.solutions = {p["prompt"]: p["canonical_solution"] for p in problems}
        self.right = right
        self.calls = []

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((list(prompts), params))
        right = self.right[params.temperature]
        outs = []
        for prompt in prompts:
            texts = [self.solutions[prompt] + "\ndef trailing():\n    raise SystemExit(1)\n"
                     if i < right else "    return None\n" for i in range(params.n)]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=t) for t in texts]))
        return outs


def test_one_generate_call_per_temperature_over_all_problems():
    problems = read_problems(limit=3)
    preset = replace(get_preset("codegen"), n=4, ks=(1, 2), temperature={1: 0.2, 2: 0.6})
    llm = FakeLLM(problems, right={0.2: 1, 0.6: 3})
    result, executed = evaluate(problems, preset, llm=llm, show_progress=False)
    assert len(llm.calls) == 2
    for (prompts, params), temperature in zip(llm.calls, (0.2, 0.6)):
        assert prompts == [p["prompt"] for p in problems]
        assert (params.n, params.temperature, params.top_p, params.max_tokens) == \
            (4, temperature, 0.95, 128)
        assert "\ndef" in params.stop_strings and "\nif" in params.stop_strings
    # run at T=0.2 scores pass@1 (1 of 4 right), the run at T=0.6 scores pass@2 (3 of 4 right)
    assert result["pass@1"] == pytest.approx(0.25)
    assert result["pass@2"] == pytest.approx(1.0)
    assert [run["temperature"] for run in result["runs"]] == [0.2, 0.6]
    assert result["runs"][0]["problems"]["HumanEval/2"] == {"n": 4, "correct": 1}
    assert "problems" not in result  # two runs: counts live in each run
    assert len(executed) == 24 and all("\ndef trailing" not in s["completion"] for s in executed)


def test_real_engine_end_to_end(tiny_codegen_dir, tmp_path):
    rc = _run_cli(["eval", "humaneval", "--model", str(tiny_codegen_dir), "--limit", "2",
                   "--n", "2", "--max-tokens", "8", "--k", "1,2", "--no-progress",
                   "--output", str(tmp_path / "r.json"),
                   "--samples-out", str(tmp_path / "s.jsonl")])
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert {"pass@1", "pass@2"} <= result.keys() and 0 <= result["pass@1"] <= result["pass@2"] <= 1
    assert result["num_problems"] == 2 and result["num_samples"] == 4
    assert set(result["problems"]) == {"HumanEval/0", "HumanEval/1"}
    samples = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"task_id", "completion", "passed", "result"} <= samples[0].keys()
    # the written samples score the same through the --samples path
    rc = _run_cli(["eval", "humaneval", "--samples", str(tmp_path / "s.jsonl"), "--k", "1,2",
                   "--no-progress", "--output", str(tmp_path / "r2.json")])
    assert rc == 0
    again = json.loads((tmp_path / "r2.json").read_text())
    assert again["pass@1"] == result["pass@1"] and again["problems"] == result["problems"]


def test_bad_arguments(capsys):
    assert _run_cli(["eval", "humaneval", "--k", "1,x", "--samples", "nope.jsonl"]) == 2
    assert "--k" in capsys.readouterr().err
    assert _run_cli(["eval", "humaneval", "--preset", "codegen", "--k", "5",
                     "--samples", "nope.jsonl"]) == 2
    assert "--temperature" in capsys.readouterr().err
    assert _run_cli(["eval", "humaneval", "--samples", "/nonexistent/s.jsonl"]) == 2
