"""`codeinfer edit` latency with and without speculative decoding on a 200-line file: the diff-model
prompt (engine.diff.build_prompt) of the file's first 200 lines, the same sampled candidates as
`codeinfer edit` (n, temperature, top_p, the stop markers), both engines in one process, rounds
interleaved; prints the median seconds per edit and the acceptance counters.

    python -m benchmarks.spec_edit_latency [--model DIFF_MODEL_DIR] [--file F] [--rounds 3]

Without --model it runs the bundled model, which writes no diffs (it times the mechanism only)."""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from engine import LLM, SamplingParams
from engine.tools.diff import STOP_MARKERS, build_prompt

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "engine" / "core" / "scheduler.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--file", default=str(DEFAULT_FILE))
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--message", default="Rename the scheduler's budget variable")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speculative-config", default='{"method": "ngram", "num_speculative_tokens": 4}')
    args = parser.parse_args()
    before = "".join(Path(args.file).read_text().splitlines(keepends=True)[:args.lines])
    plain = LLM(args.model, dtype=args.dtype)
    spec = LLM(args.model, dtype=args.dtype, speculative_config=json.loads(args.speculative_config))
    prompt_ids = plain.get_tokenizer().encode(build_prompt(Path(args.file).name, before, args.message))
    # The context bounds what fits: keep the prompt's end (the message and the diff marker).
    room = plain.engine.max_model_len - args.max_tokens
    prompt_ids = prompt_ids[-room:]
    params = SamplingParams(n=args.samples, temperature=args.temperature, top_p=0.95, seed=0,
                            max_tokens=args.max_tokens, stop=list(STOP_MARKERS))
    times: dict[str, list[float]] = {"plain": [], "speculative": []}
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, llm in (("plain", plain), ("speculative", spec)):
            start = time.perf_counter()
            out = llm.generate(prompt_token_ids=[prompt_ids], sampling_params=params, use_tqdm=False)[0]
            times[name].append(time.perf_counter() - start)
    tokens = sum(len(c.token_ids) for c in out.outputs)
    for name, values in times.items():
        print(f"{name:12s} {statistics.median(values[1:]):.3f} s per edit ({len(prompt_ids)}-token prompt, "
              f"{tokens} tokens out)")
    stats = spec.engine.get_stats()
    print(f"speed-up {statistics.median(times['plain'][1:]) / statistics.median(times['speculative'][1:]):.2f}x; "
          f"acceptance {100 * stats['spec_acceptance_rate']:.1f}%, mean accepted length "
          f"{stats['spec_mean_accepted_length']:.2f}")


if __name__ == "__main__":
    main()
