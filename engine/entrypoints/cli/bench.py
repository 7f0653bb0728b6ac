"""`codeinfer bench`: offline throughput, TTFT and inter-token latency against concurrency, next to
transformers, CTranslate2 and OpenVINO on the same prompts in the same run, idle and optionally next
to busy background processes; a table, JSON, a PNG plot, decode bandwidth, peak memory; optionally
teacher-forced next-token agreement with fp32 (--quality)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ...engine_args import EngineArgs
from ...tools import BENCH_EXTRA
from ...tools.bench_workloads import WORKLOADS

PEERS = ("transformers", "ctranslate2", "openvino")
QUALITY_CHUNKS = ((0, "whole-prompt prefill"), (8, "8-token chunks"), (32, "32-token chunks"))


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _peer_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown systems {bad}; choose from {', '.join(PEERS)}")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="throughput and latency benchmark against transformers, CTranslate2, OpenVINO",
        description="Generated tokens/s, TTFT and inter-token latency at each concurrency (random "
                    "fixed-seed prompts, greedy, EOS ignored, after a warm-up), every system in the "
                    "same run, round robin.")
    p.add_argument("--concurrency", type=_int_list, default="1,8,32",
                   help="comma-separated numbers of concurrent requests")
    p.add_argument("--prompt-len", type=int, default=128,
                   help="tokens per prompt (up to the model's context less --max-tokens)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per request")
    p.add_argument("--workload", default="random", choices=WORKLOADS,
                   help="prompts: random ids; copy (a file of this package, then its own start "
                        "again: the model should copy); complete (a file cut after a def line). "
                        "With --speculative-config codeinfer runs with and without it")
    p.add_argument("--compare", type=_peer_list, default=[],
                   help=f"peers to run too: transformers,ctranslate2,openvino ({BENCH_EXTRA})")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds: every system and concurrency once per round, round robin; the table "
                        "shows the median and the range, speed-ups paired per round (on a machine "
                        "that other work shares, speed drifts between runs as that work comes and "
                        "goes; interleaved rounds give every system the same conditions)")
    p.add_argument("--background-load", type=int, default=0, metavar="N",
                   help="also run every configuration next to N busy processes of its own (started for "
                        "the timed part only), reported next to its idle figure")
    p.add_argument("--openvino-precision", default="auto", choices=["auto", "f32", "bf16"],
                   help="OpenVINO's INFERENCE_PRECISION_HINT (auto: bf16 where the CPU has BF16, else f32)")
    p.add_argument("--openvino-export-python", default=None, metavar="PYTHON",
                   help="Python that runs the optimum-intel export (default: this one); for an "
                        "environment whose transformers is newer than optimum-intel supports")
    p.add_argument("--plot", default=None, help="write a PNG of tokens/s against concurrency")
    p.add_argument("--json", default=None, help="write the raw results as JSON")
    p.add_argument("--dtypes", default=None,
                   help="run codeinfer once per comma-separated dtype (e.g. bfloat16,int8); "
                        "default: --dtype")
    p.add_argument("--quality", default=None, metavar="DTYPES",
                   help="also measure teacher-forced next-token agreement with float32 for these "
                        "comma-separated dtypes (e.g. bfloat16,int8)")
    EngineArgs.add_cli_args(p)
    p.set_defaults(func=run)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before the runs, not after them: what --plot imports, and that --json and --plot name files
    in folders that can be written."""
    from ...tools import bench_report

    if args.plot:
        bench_report.check_plotting()
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        folder = Path(path or ".").absolute().parent
        if path and not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise ValueError(f"{flag}: cannot write {path}: {folder} is not a writable folder")


def run(args: argparse.Namespace) -> int:
    from ...core.llm_engine import default_model_dir
    from ...hub import resolve_model
    from ...tools import bench, bench_report

    if args.prompt_len < 1 or args.max_tokens < 2 or args.background_load < 0:
        raise ValueError("--prompt-len must be >= 1, --max-tokens >= 2 and --background-load >= 0")
    _check_outputs(args)
    kwargs = EngineArgs.from_cli_args(args).to_dict()
    model = str(resolve_model(kwargs.pop("model") or default_model_dir(), args.revision)[0])
    print(f"codeinfer bench: {model}, dtype {args.dtypes or args.dtype}, prompts {args.prompt_len} tokens, "
          f"{args.max_tokens} new tokens, {args.workload} workload, concurrency {args.concurrency}, background load "
          f"{args.background_load}")
    options = {"openvino_precision": args.openvino_precision,
               "openvino_export_python": args.openvino_export_python}
    result = bench.run_comparison(model, kwargs, args.concurrency, args.prompt_len,
                                  args.max_tokens, args.compare, seed=args.seed,
                                  dtypes=args.dtypes.split(",") if args.dtypes else None,
                                  repeat=args.repeat, background_load=args.background_load,
                                  options=options, workload=args.workload)
    if args.quality:
        from ...tools.bench_quality import agreement
        dtypes = [d.strip() for d in args.quality.split(",")]
        # Whole prompts, then 8- and 32-token chunks (chunked prefill reads its own keys back
        # from the cache).
        kv = args.kv_cache_dtype
        suffix = "" if kv == "auto" else f" + {kv} KV cache"
        result["quality"] = {f"{dtype}{suffix}, {label}": frac for chunk, label in QUALITY_CHUNKS
                             for dtype, frac in agreement(model, dtypes, chunk=chunk,
                                                          kv_cache_dtype=kv).items()}
    # The JSON first: a plot that fails (no matplotlib) must not lose the measurements.
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print()
    print(bench_report.format_table(result))
    for dtype, frac in result.get("quality", {}).items():
        print(f"teacher-forced next-token agreement with float32, {dtype}: {100 * frac:.2f}%")
    if args.plot:
        bench_report.plot(result, args.plot)
        print(f"plot: {args.plot}")
    return 0
