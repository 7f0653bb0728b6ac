"""`codeinfer bench` harness: offline generated tokens/s against concurrency for codeinfer and its
peers (transformers generate(), CTranslate2), same prompts, same run, a table and a PNG plot.

Each (system, concurrency) runs in a fresh subprocess (`python -m engine.bench --worker SPEC`) so
the peak resident memory reported is that configuration's alone. Per configuration:
    tokens/s       = concurrency x max_tokens / wall time of the whole run (prefill included)
    decode steps/s = (max_tokens - 1) / decode time (codeinfer: from the moment every request has
                     its first token; peers: full run - prefill-only run)
    decode GB/s    = weight bytes x decode steps/s, next to the measured memory copy bandwidth."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from engine import bench_peers

SYSTEMS = ("codeinfer", "transformers", "ctranslate2")


def random_prompts(num: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """num prompts of length random ids in [1, vocab) from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (num, length), generator=gen).tolist()


def copy_bandwidth_gbs(num_bytes: int = 512 << 20, repeats: int = 5) -> float:
    """Best-of memory copy bandwidth in GB/s, counting bytes read + bytes written."""
    src = torch.ones(num_bytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * num_bytes / best / 1e9


# ------------------------------------------------------------------------- one configuration
def worker(spec: dict) -> dict:
    """Run one (system, concurrency) configuration; returns the timings and the peak RSS."""
    n, plen, seed = spec["concurrency"], spec["prompt_len"], spec["seed"]
    prompts = {name: random_prompts(n, plen, spec["vocab"], seed + i)
               for i, name in enumerate(("full", "prefill", "warm"))}
    torch.set_num_threads(spec["threads"])
    system, max_tokens = spec["system"], spec["max_tokens"]
    if system == "codeinfer":
        result = bench_peers.run_codeinfer(spec["model"], spec["engine"], prompts, max_tokens)
    elif system == "transformers":
        result = bench_peers.run_transformers(spec["model"], prompts, max_tokens, spec["pad_id"])
    else:
        result = bench_peers.run_ctranslate2(spec["ct2_dir"], prompts, max_tokens)
    full, prefill = result["full_s"], result["prefill_s"]
    # Peers: decode time = full run - prefill-only run (their APIs expose no first-token time).
    decode_s = result.get("decode_s") or (full - prefill)
    steps_s = (max_tokens - 1) / decode_s if decode_s > 0 else float("nan")
    result.update(system=system, concurrency=n, tok_s=n * max_tokens / full,
                  decode_steps_s=steps_s, decode_gbs=result["weight_bytes"] * steps_s / 1e9,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def _run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "engine.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['system']} at {spec['concurrency']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- the whole comparison
def _ct2_dir(model: str) -> Path:
    digest = hashlib.sha1(str(Path(model).resolve()).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "codeinfer" / "ct2" / f"{Path(model).name}-{digest}-int8"


def _check_peer(system: str, model: str) -> str | None:
    """None if the peer can run, else why not (printed, the peer is skipped)."""
    if system == "transformers":
        try:
            import transformers  # noqa: F401
        except ImportError:
            return "transformers is not installed (pip install codeinfer[bench])"
    if system == "ctranslate2":
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            return "ctranslate2 is not installed (pip install codeinfer[bench])"
        if not (_ct2_dir(model) / "model.bin").is_file():
            code = ("import sys; from pathlib import Path; from engine.bench_peers import "
                    "convert_ctranslate2 as c; c(sys.argv[1], Path(sys.argv[2]))")
            proc = subprocess.run([sys.executable, "-c", code, model, str(_ct2_dir(model))],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                return f"CTranslate2's converter cannot convert this checkpoint: {last}"
    return None


def run_comparison(model: str, engine_kwargs: dict, concurrency: list[int], prompt_len: int,
                   max_tokens: int, compare: list[str], seed: int = 0, dtypes: list[str] | None = None,
                   repeat: int = 1, log=print) -> dict:
    """Every system (codeinfer once per dtype) at every concurrency, interleaved, same prompts;
    returns the rows and the machine facts. repeat > 1 runs every system that many times, round
    robin (a machine that slows down mid-run slows every system alike), and keeps each system's
    median run; its row lists all runs' tokens/s in `tok_s_runs`."""
    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
    from engine.config import load_config
    from engine.tokenizer import Tokenizer

    config = load_config(Path(model))
    tok = Tokenizer(Path(model), config.eos_token_id)
    vocab = min(len(tok), config.vocab_size)
    systems = [("codeinfer", d) for d in dtypes or [engine_kwargs.get("dtype", "auto")]]
    for peer in compare:
        why = _check_peer(peer, model)
        if why:
            log(f"skipping {peer}: {why}")
        else:
            systems.append((peer, None))
    threads = len(os.sched_getaffinity(0))
    base = dict(model=model, engine=engine_kwargs, prompt_len=prompt_len, max_tokens=max_tokens,
                seed=seed, vocab=vocab, threads=threads, pad_id=tok.eos_token_id or 0,
                ct2_dir=str(_ct2_dir(model)))
    rows = []
    for n in concurrency:
        runs: dict[int, list[dict]] = {i: [] for i in range(len(systems))}
        for _ in range(repeat):
            for i, (system, dtype) in enumerate(systems):
                engine = dict(engine_kwargs, dtype=dtype) if dtype else engine_kwargs
                row = _run_worker(dict(base, system=system, engine=engine, concurrency=n))
                log(f"  {system:<13} n={n:<3} {row['tok_s']:8.1f} tok/s  "
                    f"peak RSS {row['peak_rss_mb']:.0f} MB")
                runs[i].append(row)
        for i in range(len(systems)):
            ordered = sorted(runs[i], key=lambda r: r["tok_s"])
            rows.append(dict(ordered[len(ordered) // 2], tok_s_runs=[r["tok_s"] for r in runs[i]]))
    return {"rows": rows, "copy_gbs": copy_bandwidth_gbs(), "threads": threads,
            "model": model, "model_name": config.name}


def format_table(result: dict) -> str:
    """Markdown table, one row per concurrency x system; peers get codeinfer's speed-up per dtype."""
    rows = result["rows"]
    ours = [r for r in rows if r["system"] == "codeinfer"]
    lines = [f"memory copy bandwidth (read + write): {result['copy_gbs']:.1f} GB/s, "
             f"{result['threads']} threads", "",
             "| requests | system | dtype | tokens/s (median; min-max of repeats) | codeinfer speed-up | decode steps/s | "
             "decode GB/s (% of copy) | peak RSS MB |",
             "|---:|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        ratio = "" if r["system"] == "codeinfer" else ", ".join(
            f"{o['tok_s'] / r['tok_s']:.2f}x ({o['dtype']})" for o in ours
            if o["concurrency"] == r["concurrency"])
        runs = r.get("tok_s_runs", [])
        spread = f" ({min(runs):.1f}-{max(runs):.1f})" if len(runs) > 1 else ""
        lines.append(f"| {r['concurrency']} | {r['system']} | {r['dtype']} | {r['tok_s']:.1f}{spread} | "
                     f"{ratio} | {r['decode_steps_s']:.2f} | {r['decode_gbs']:.1f} "
                     f"({100 * r['decode_gbs'] / result['copy_gbs']:.0f}%) | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plot: matplotlib is not installed (pip install codeinfer[bench])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for system, dtype in dict.fromkeys((r["system"], r["dtype"]) for r in result["rows"]):
        pts = [(r["concurrency"], r["tok_s"]) for r in result["rows"]
               if (r["system"], r["dtype"]) == (system, dtype)]
        ax.plot(*zip(*pts), marker="o", label=f"{system} ({dtype})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("generated tokens/s")
    ax.set_title(Path(result["model"]).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m engine.bench --worker SPEC (run `codeinfer bench` instead)")
