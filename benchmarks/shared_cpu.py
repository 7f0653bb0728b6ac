"""Decode tokens/s with N CPU-bound processes beside the engine, for OpenMP and engine settings.

Each setting runs in a fresh process (libgomp reads its environment once), settings round robin.
A setting is NAME:ITEM,...; an ITEM is an environment variable (VAR=VALUE) or an engine flag
(--flag or --flag=VALUE, as `codeinfer generate` takes it):

    python -m benchmarks.shared_cpu /tmp/ckpt/codegen-350m --background 0,1,3 --requests 1,8 \
        --repeat 3 --setting engine: --setting fixed:--no-dynamic-threads \
        --setting libgomp:GOMP_SPINCOUNT=300000,--no-dynamic-threads

300000 is libgomp's own spin count; a setting with no variables gets the engine's default
(GOMP_SPINCOUNT=1000, set when the engine is imported before torch). The summary gives each
setting's median (min-max) tokens/s and the share of its own idle figure kept under load.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from engine.tools.bench_report import median_range

_SPIN_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
REPO = Path(__file__).resolve().parents[1]


def engine_options(flags: list) -> dict:
    """Engine flags (`--no-dynamic-threads`, `--threads=1`) -> LLM keyword arguments, over the
    benchmark's int8 + int8 KV."""
    from engine.engine_args import EngineArgs

    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    args = parser.parse_args(["--dtype", "int8", "--kv-cache-dtype", "int8", *flags])
    return {k: v for k, v in EngineArgs.from_cli_args(args).to_dict().items() if k != "model"}


def measure(model: str, backgrounds: list, requests: list, new_tokens: int, flags: list) -> dict:
    """In this process: tokens/s per (background processes, requests), greedy."""
    from engine import LLM, SamplingParams

    llm = LLM(model=model, **engine_options(flags))
    rng = random.Random(0)
    vocab = llm.engine.config.vocab_size
    prompts = [[rng.randrange(vocab // 50, vocab) for _ in range(128)] for _ in range(max(requests))]
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate(prompt_token_ids=prompts[:2], sampling_params=params, use_tqdm=False)
    result = {}
    for num_busy in backgrounds:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(num_busy)]
        try:
            time.sleep(0.3)
            for num in requests:
                start = time.perf_counter()
                llm.generate(prompt_token_ids=prompts[:num], sampling_params=params, use_tqdm=False)
                result[f"busy{num_busy}_req{num}"] = round(num * new_tokens / (time.perf_counter() - start), 1)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--background", default="0,1,3", help="busy processes beside the engine")
    p.add_argument("--requests", default="1", help="concurrent requests")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--setting", action="append", default=None, metavar="NAME:ITEM,...",
                   help="VAR=VALUE (environment) or --engine-flag[=VALUE] items; default: the "
                        "engine's defaults against --no-dynamic-threads")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--flag", dest="flags", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    backgrounds = [int(x) for x in args.background.split(",")]
    requests = [int(x) for x in args.requests.split(",")]
    if args.worker:
        print(json.dumps(measure(args.model, backgrounds, requests, args.new_tokens, args.flags)))
        return
    results = {}
    for round_ in range(1, args.repeat + 1):
        for setting in args.setting or ["engine:", "fixed:--no-dynamic-threads"]:
            name, _, items = setting.partition(":")
            items = [item for item in items.split(",") if item]
            env = {k: v for k, v in os.environ.items() if k not in _SPIN_VARS}
            env.update(item.split("=", 1) for item in items if not item.startswith("--"))
            flags = [item for item in items if item.startswith("--")]
            out = subprocess.run([sys.executable, "-m", "benchmarks.shared_cpu", args.model, "--worker",
                                  "--background", args.background, "--requests", args.requests,
                                  "--new-tokens", str(args.new_tokens), *[f"--flag={f}" for f in flags]],
                                 env=env, capture_output=True, text=True, check=True, cwd=REPO)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(round_, name, json.dumps(row), flush=True)
            for key, value in row.items():
                results.setdefault((name, key), []).append(value)
    summarize(results, backgrounds, requests)


def summarize(results: dict, backgrounds: list, requests: list) -> None:
    """A markdown table: per setting and requests, tokens/s per load and the share of idle kept."""
    names = list(dict.fromkeys(name for name, _ in results))
    print("\n| setting | requests | " + " | ".join(f"{b} busy" for b in backgrounds) + " |")
    print("|---|---:|" + "---:|" * len(backgrounds))
    for name in names:
        for num in requests:
            idle = median_range(results.get((name, f"busy0_req{num}"), [float("nan")]))[0]
            cells = []
            for b in backgrounds:
                med, low, high = median_range(results[(name, f"busy{b}_req{num}")])
                cells.append(f"{med:.1f} ({low:.1f}-{high:.1f})" + (f", {med / idle:.0%}" if b else ""))
            print(f"| {name} | {num} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
