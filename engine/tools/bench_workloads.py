"""The prompt sets `codeinfer bench --workload` times, built from this package's own Python source:

    random    random token ids (text that never repeats: speculation must cost next to nothing)
    copy      a file, then the start of its own text again: the model should copy what follows
              (an editor resending a file, a diff model re-emitting a hunk's lines)
    complete  a file cut just after a function's `def` line: an ordinary completion

Every prompt is exactly `length` tokens; a seed picks the files and cut points, so the warm-up,
prefill and timed sets differ but are fixed from run to run."""
from __future__ import annotations

import random
import re
from pathlib import Path

WORKLOADS = ("random", "copy", "complete")
PACKAGE = Path(__file__).resolve().parents[1]
# copy: the repeated start is this fraction of the prompt; the rest is the file it copies from.
COPY_TAIL = 0.25
DEF_LINE = re.compile(r"^ *def [^\n]*:\n", re.MULTILINE)


def random_prompts(num: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """num prompts of length random ids in [1, vocab) from a fixed seed."""
    import torch  # here: the CLI reads WORKLOADS without loading torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (num, length), generator=gen).tolist()


def _sources() -> list[str]:
    """The package's Python files, in a fixed order."""
    return [p.read_text() for p in sorted(PACKAGE.rglob("*.py")) if p.stat().st_size > 2000]


def copy_prompts(num: int, length: int, encode, seed: int) -> list[list[int]]:
    """A file's first length - tail tokens, then its first tail tokens again."""
    rng = random.Random(seed)
    files = [ids for ids in (encode(text) for text in _sources()) if len(ids) >= length]
    tail = max(1, int(length * COPY_TAIL))
    prompts = []
    for _ in range(num):
        ids = rng.choice(files)
        start = rng.randrange(0, len(ids) - length + 1)
        body = ids[start:start + length - tail]
        prompts.append(body + body[:tail])
    return prompts


def complete_prompts(num: int, length: int, encode, seed: int) -> list[list[int]]:
    """The length tokens of a file that end with a function's `def ... :` line (padded on the
    left with the file's start repeated when the file is shorter)."""
    rng = random.Random(seed)
    # Everything up to and including a one-line `def ...:` (methods and functions).
    cuts = [text[:m.end()] for text in _sources() for m in DEF_LINE.finditer(text)]
    prompts = []
    for _ in range(num):
        ids = encode(rng.choice(cuts))
        while len(ids) < length:
            ids = ids + ids
        prompts.append(ids[-length:])
    return prompts


def workload_prompts(workload: str, num: int, length: int, vocab: int, seed: int,
                     tokenizer=None) -> list[list[int]]:
    """The prompts of one workload; tokenizer (encode(str) -> ids) for copy and complete."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    if workload == "random":
        return random_prompts(num, length, vocab, seed)
    make = copy_prompts if workload == "copy" else complete_prompts
    return make(num, length, tokenizer.encode, seed)
