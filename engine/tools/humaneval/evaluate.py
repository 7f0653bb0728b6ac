"""HumanEval end to end: sample completions through the engine, run them in the sandbox, score.

A "run" is one generation at one temperature: all problems go to `LLM.generate` in a single call
with SamplingParams(n=...), so the n samples of a problem share its prompt's KV blocks.
"""
from collections import defaultdict

from tqdm import tqdm

from . import sandbox
from .metrics import mean_pass_at_k
from .presets import Preset
from .problems import STOP_SEQUENCES, check_program, truncate_completion


def generate_samples(llm, problems: list, preset: Preset, temperature: float,
                     seed: int | None = None, show_progress: bool = True) -> list:
    """[{"task_id", "completion"}] for preset.n samples of every problem, truncated at the stops."""
    from ... import SamplingParams

    params = SamplingParams(n=preset.n, temperature=temperature, top_p=preset.top_p,
                            max_tokens=preset.max_tokens, stop=list(STOP_SEQUENCES), seed=seed)
    prompts = [preset.build_prompt(problem) for problem in problems]
    outputs = llm.generate(prompts, params, use_tqdm=show_progress)
    samples = []
    for problem, output in zip(problems, outputs):
        for completion in output.outputs:
            text = completion.text
            if preset.completion_postprocess is not None:
                text = preset.completion_postprocess(text)
            samples.append({"task_id": problem["task_id"],
                            "completion": truncate_completion(text)})
    return samples


def execute_samples(problems: list, samples: list, timeout: float = sandbox.DEFAULT_TIMEOUT,
                    workers: int | None = None, show_progress: bool = True,
                    isolation_enabled: bool = True) -> list:
    """Run each sample's check program in the sandbox; sets the sample's "passed" and "result"."""
    by_id = {problem["task_id"]: problem for problem in problems}
    unknown = sorted({s["task_id"] for s in samples} - by_id.keys())
    if unknown:
        raise ValueError(f"samples name unknown task_id(s): {', '.join(unknown[:5])}")
    programs = [check_program(by_id[s["task_id"]], s["completion"]) for s in samples]
    with tqdm(total=len(programs), desc="execute", unit="prog", disable=not show_progress) as bar:
        results = sandbox.run_programs(programs, timeout=timeout, workers=workers,
                                       progress=bar.update, isolation_enabled=isolation_enabled)
    for sample, result in zip(samples, results):
        sample["passed"], sample["result"] = result.passed, result.result
    return samples


def score(problems: list, samples: list, ks) -> tuple:
    """(pass@k dict, per-problem {"n", "correct"}) over the problems that have samples.

    A k larger than some problem's sample count is left out (the estimator needs n >= k).
    """
    counts = defaultdict(lambda: [0, 0])
    for sample in samples:
        counts[sample["task_id"]][0] += 1
        counts[sample["task_id"]][1] += bool(sample["passed"])
    per_problem = {p["task_id"]: {"n": counts[p["task_id"]][0], "correct": counts[p["task_id"]][1]}
                   for p in problems if p["task_id"] in counts}
    if not per_problem:
        raise ValueError("no samples to score")
    min_n = min(c["n"] for c in per_problem.values())
    pairs = [(c["n"], c["correct"]) for c in per_problem.values()]
    pass_at = {f"pass@{k}": mean_pass_at_k(pairs, k) for k in ks if k <= min_n}
    return pass_at, per_problem


def evaluate(problems: list, preset: Preset, llm=None, samples: list | None = None,
             timeout: float = sandbox.DEFAULT_TIMEOUT, workers: int | None = None,
             seed: int | None = None, show_progress: bool = True,
             isolation_enabled: bool = True) -> tuple:
    """Score either pre-generated `samples` or fresh ones from `llm` under `preset`.

    Returns (result dict for result.json, all executed samples with their verdicts).
    """
    if samples is not None:
        ids = {s["task_id"] for s in samples}
        problems = [p for p in problems if p["task_id"] in ids]
        samples = [s for s in samples if s["task_id"] in {p["task_id"] for p in problems}]
        runs = [(None, tuple(preset.ks), samples)]
    elif llm is None:
        raise ValueError("evaluate needs an llm or samples")
    else:
        runs = [(t, ks, generate_samples(llm, problems, preset, t, seed, show_progress))
                for t, ks in preset.runs()]
    pass_at_all, run_results, executed = {}, [], []
    for temperature, ks, run_samples in runs:
        if temperature is not None:
            for sample in run_samples:
                sample["temperature"] = temperature
        execute_samples(problems, run_samples, timeout, workers, show_progress, isolation_enabled)
        pass_at, per_problem = score(problems, run_samples, ks)
        pass_at_all.update(pass_at)
        run_results.append({"temperature": temperature, "ks": list(ks), **pass_at,
                            "problems": per_problem})
        executed.extend(run_samples)
    result = {**pass_at_all, "num_problems": len(problems), "num_samples": len(executed),
              "preset": preset.name, "runs": run_results}
    if len(run_results) == 1:  # the common case: per-problem counts at the top level too
        result["problems"] = run_results[0]["problems"]
    return result, executed
