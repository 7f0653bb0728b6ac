"""HumanEval execution: canonical solutions all pass through `codeinfer eval humaneval --samples`,
and each program runs in a fresh sandbox (the hostile suite is test_sandbox_hostile.py)."""
import argparse
import json
import time

import pytest

from engine.entrypoints.cli import eval as eval_command
from engine.tools.humaneval import read_problems, run_program


def _run_cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="codeinfer")
    eval_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_canonical_solutions_score_164_of_164(tmp_path):
    problems = read_problems()
    samples = _write_jsonl(tmp_path / "samples.jsonl", [
        {"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems])
    start = time.perf_counter()
    rc = _run_cli(["eval", "humaneval", "--samples", samples, "--no-progress",
                   "--timeout", "10", "--output", str(tmp_path / "result.json"),
                   "--samples-out", str(tmp_path / "out.jsonl")])
    elapsed = time.perf_counter() - start
    assert rc == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["pass@1"] == 1.0 and "pass@10" not in result  # n=1: only k=1 is defined
    assert result["num_problems"] == 164
    assert all(c == {"n": 1, "correct": 1} for c in result["problems"].values())
    executed = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(executed) == 164 and all(s["passed"] for s in executed)
    assert elapsed < 60, f"164 programs took {elapsed:.1f}s"


def test_per_problem_counts_and_pass_at_k(tmp_path):
    problems = read_problems(limit=2)
    good = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    bad = [{"task_id": p["task_id"], "completion": "    return None\n"} for p in problems]
    # problem 0: 2 right of 4; problem 1: 0 right of 4
    rows = good[:1] * 2 + bad[:1] * 2 + bad[1:] * 4
    samples = _write_jsonl(tmp_path / "s.jsonl", rows)
    rc = _run_cli(["eval", "humaneval", "--samples", samples, "--k", "1,2,10", "--no-progress",
                   "--output", str(tmp_path / "r.json")])
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["problems"] == {"HumanEval/0": {"n": 4, "correct": 2},
                                  "HumanEval/1": {"n": 4, "correct": 0}}
    assert result["pass@1"] == pytest.approx((0.5 + 0) / 2)
    assert result["pass@2"] == pytest.approx((5 / 6 + 0) / 2)
    assert "pass@10" not in result


def test_unknown_task_id_is_an_error(tmp_path, capsys):
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""},
                                                  {"task_id": "Nope/1", "completion": ""}])
    assert _run_cli(["eval", "humaneval", "--samples", samples, "--limit", "1",
                     "--no-progress"]) == 0  # --limit drops samples of other problems
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert _run_cli(["eval", "humaneval", "--samples", str(bad), "--no-progress"]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_program_may_write_inside_its_sandbox_and_each_sandbox_is_fresh():
    writer = "open('f.txt', 'w').write('x')\nimport os\nos.mkdir('d')\nopen('d/g', 'w').close()\n"
    assert run_program(writer).passed
    assert run_program(writer).passed  # a new empty directory: no leftover 'd'
    assert run_program("import os\nassert os.listdir('.') == []\n").passed
    failing = run_program("assert False, 'boom'")
    assert not failing.passed and "AssertionError" in failing.result and "boom" in failing.result
