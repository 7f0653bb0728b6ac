"""HumanEval execution: canonical solutions all pass through `codeinfer eval humaneval --samples`,
and hostile samples fail alone without touching anything outside their sandbox."""
import argparse
import json
import os
import tempfile
import time

import pytest

from engine.commands import eval as eval_command
from engine.humaneval import execute_samples, read_problems, run_program, score


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


def _hostile_bodies(outside):
    """Function bodies for HumanEval/0 that try to do harm; each must simply fail."""
    target = str(outside / "pwned")
    keep = str(outside / "keep")
    return {
        "write outside": f"    open({target!r}, 'w').write('x')\n",
        "os.open outside": (f"    import os\n"
                            f"    os.close(os.open({target!r}, os.O_CREAT | os.O_WRONLY))\n"),
        "relative escape": f"    open('../{outside.parent.name}-pwned', 'w').write('x')\n",
        "delete outside": f"    import posix\n    posix.unlink({keep!r})\n",
        "rmtree outside": f"    import shutil\n    shutil.rmtree({str(outside)!r})\n",
        "shell": f"    import posix\n    posix.system('touch {target}')\n",
        "endless loop": "    while True:\n        pass\n",
        "unkillable sleep": ("    import time\n    while True:\n        try:\n"
                             "            time.sleep(100)\n        except BaseException:\n"
                             "            pass\n"),
        "memory bomb": "    x = bytearray(1 << 36)\n    return x\n",
        "growing memory": "    a = []\n    while True:\n        a.append(' ' * (1 << 26))\n",
        "fork bomb": "    import os\n    while True:\n        os.fork()\n",
        "raw fork bomb": "    import posix\n    while True:\n        posix.fork()\n",
        "multiprocessing": ("    import multiprocessing\n"
                            "    multiprocessing.Process(target=print).start()\n"),
        "fake success": "    import os\n    os._exit(0)\n",
        "exit": "    raise SystemExit(0)\n",
        "flood output": "    while True:\n        print('x' * 10000)\n",
    }


def test_hostile_samples_fail_alone_without_harm(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    problem = read_problems(limit=1)
    bodies = _hostile_bodies(outside)
    samples = [{"task_id": "HumanEval/0", "completion": body} for body in bodies.values()]
    samples.append({"task_id": "HumanEval/0", "completion": problem[0]["canonical_solution"]})
    start = time.perf_counter()
    execute_samples(problem, samples, timeout=1.0, workers=4, show_progress=False)
    elapsed = time.perf_counter() - start
    verdicts = dict(zip(list(bodies) + ["canonical"], samples))
    failed_to_fail = [name for name, s in verdicts.items() if s["passed"] and name != "canonical"]
    assert not failed_to_fail, {n: verdicts[n]["result"] for n in failed_to_fail}
    assert verdicts["canonical"]["passed"], verdicts["canonical"]["result"]
    assert verdicts["endless loop"]["result"] == "timed out"
    assert verdicts["unkillable sleep"]["result"] == "timed out"
    assert sorted(os.listdir(outside)) == ["keep"]
    assert (outside / "keep").read_text() == "keep"
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), f"{tmp_path.name}-pwned"))
    _, counts = score(problem, samples, (1,))
    assert counts["HumanEval/0"] == {"n": len(samples), "correct": 1}
    assert elapsed < 30


def test_program_may_write_inside_its_sandbox_and_each_sandbox_is_fresh():
    writer = "open('f.txt', 'w').write('x')\nimport os\nos.mkdir('d')\nopen('d/g', 'w').close()\n"
    assert run_program(writer).passed
    assert run_program(writer).passed  # a new empty directory: no leftover 'd'
    assert run_program("import os\nassert os.listdir('.') == ['.verdict']\n").passed
    failing = run_program("assert False, 'boom'")
    assert not failing.passed and "AssertionError" in failing.result and "boom" in failing.result
