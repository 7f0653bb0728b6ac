"""`codeinfer bench` harness: offline generated tokens/s, TTFT and inter-token latency against
concurrency for codeinfer and its peers (transformers generate(), CTranslate2, OpenVINO GenAI), same
prompts, same run, optionally next to N busy background processes; the report is engine/tools/bench_report.py.

Each (system, concurrency, load) runs in a fresh subprocess (`python -m engine.tools.bench --worker SPEC`)
so the peak resident memory reported is that configuration's alone, and one system that fails is
reported failed with its reason while the others go on. Rounds run every configuration once, round
robin, each round first measuring the machine's memory bandwidth, so ratios can be paired per round
(a shared VM's bandwidth moves from one round to the next). Per configuration:
    tokens/s    = concurrency x max_tokens / wall time of the whole run (prefill included)
    TTFT        = time until every request has its first token (codeinfer: streamed from the timed
                  run; peers: a generate of one new token on prompts of the same shape)
    ITL         = (total - TTFT) / (max_tokens - 1)
    decode GB/s = bytes the decode steps read (engine/tools/bench_bytes.py) / (total - TTFT)."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from . import BENCH_EXTRA, bench_load, bench_report
from .bench_bytes import Storage, decode_bytes, measure_bandwidth
from .bench_workloads import workload_prompts

PEERS = ("transformers", "ctranslate2", "openvino")


class RunFailed(RuntimeError):
    """A system could not be prepared or run; the message is its one-line reason."""


@dataclass
class System:
    """One compared system: its worker spec (without concurrency and load) and, when it cannot run
    at all, why."""
    name: str
    spec: dict
    label: str
    failed: str | None = None


# ------------------------------------------------------------------------- one configuration
def _runner(system: str):
    from . import bench_peers
    if system == "openvino":
        from .bench_openvino import run_openvino
        return run_openvino
    return {"codeinfer": bench_peers.run_codeinfer, "transformers": bench_peers.run_transformers,
            "ctranslate2": bench_peers.run_ctranslate2}[system]


def summarize_run(spec: dict, result: dict, config) -> dict:
    """A runner's timings -> tokens/s, TTFT, ITL and decode bandwidth of the configuration."""
    n, plen, max_tokens = spec["concurrency"], spec["prompt_len"], spec["max_tokens"]
    full = result["full_s"]
    ttft = result.get("ttft_s", result["prefill_s"])
    decode_s = full - ttft
    read = decode_bytes(config, Storage(**result["storage"]), plen, max_tokens, n)
    ok = decode_s > 0
    return dict(result, system=spec["system"], concurrency=n, load=spec["background_load"],
                tok_s=n * max_tokens / full, ttft_ms=1e3 * ttft,
                ttft_method=result.get("ttft_method", "1-token run"),
                itl_ms=1e3 * decode_s / (max_tokens - 1) if ok else float("nan"),
                decode_steps_s=(max_tokens - 1) / decode_s if ok else float("nan"),
                decode_bytes=read, decode_gbs=read / decode_s / 1e9 if ok else float("nan"))


def worker(spec: dict) -> dict:
    """Run one (system, concurrency, load) configuration; returns its figures and peak RSS."""
    from ..config import load_config
    from ..tokenizer import Tokenizer

    n, plen, seed = spec["concurrency"], spec["prompt_len"], spec["seed"]
    workload = spec.get("workload", "random")
    tok = None if workload == "random" else Tokenizer(Path(spec["model"]), None)
    prompts = {name: workload_prompts(workload, n, plen, spec["vocab"], seed + i, tok)
               for i, name in enumerate(("full", "prefill", "warm"))}
    torch.set_num_threads(spec["threads"])
    runner = _runner(spec["system"])
    started = time.perf_counter()
    result = runner(spec, prompts)
    row = summarize_run(spec, result, load_config(spec["model"]))
    # From the call to the first run: the system's import, its model load (from its own converted
    # folder for the peers) and any set-up, as a user waits for it.
    row["load_s"] = result["runs_start"] - started
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM, not getrusage's ru_maxrss: the latter
    is inherited through fork and exec, so a worker would report its parent's peak (the bandwidth
    buffers) whenever that was larger than its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no error output"


def run_worker(spec: dict) -> dict:
    """worker(spec) in a fresh process; RunFailed with the error's last line if it fails."""
    proc = subprocess.run([sys.executable, "-m", __spec__.name, "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RunFailed(_last_line(proc.stderr))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- preparing the peers
def _ct2_dir(model: str) -> Path:
    digest = hashlib.sha1(str(Path(model).resolve()).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "codeinfer" / "ct2" / f"{Path(model).name}-{digest}-int8"


def _require(module: str, system: str) -> None:
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"--compare {system}: {module} is not installed ({BENCH_EXTRA})")


def _prepare_ctranslate2(model: str) -> dict:
    out = _ct2_dir(model)
    if not (out / "model.bin").is_file():
        code = ("import sys; from pathlib import Path; from engine.tools.bench_peers import "
                "convert_ctranslate2 as c; c(sys.argv[1], Path(sys.argv[2]))")
        proc = subprocess.run([sys.executable, "-c", code, model, str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunFailed(f"CTranslate2's converter cannot convert this checkpoint: {_last_line(proc.stderr)}")
    return {"ct2_dir": str(out)}


def check_peer(system: str, model: str, options: dict) -> None:
    """ValueError naming the pip command when a peer's packages are missing: called for every peer
    before anything is converted or run."""
    if system == "transformers":
        _require("transformers", system)
    elif system == "ctranslate2":
        _require("ctranslate2", system)
    elif system == "openvino":
        from . import bench_openvino
        bench_openvino.check_installed(model, options.get("openvino_export_python") or sys.executable)
    else:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(PEERS)}")


def prepare_peer(system: str, model: str, options: dict) -> dict:
    """The spec keys a peer needs (a converted or exported model); RunFailed when the conversion fails."""
    if system == "ctranslate2":
        return _prepare_ctranslate2(model)
    if system == "openvino":
        from . import bench_openvino
        try:
            ov_dir = bench_openvino.export(model, options.get("openvino_export_python") or sys.executable)
        except bench_openvino.ExportFailed as e:
            raise RunFailed(str(e)) from None
        return {"ov_dir": str(ov_dir), "ov_precision": options.get("openvino_precision", "auto")}
    return {}


# ------------------------------------------------------------------------- the whole comparison
def _run_one(run, system: System, n: int, load: int, bandwidth: dict, log) -> dict:
    """One configuration's result with the round's bandwidth, or {"failed": reason}: whatever a
    peer raises is its failure, never the comparison's (Ctrl-C still stops everything)."""
    try:
        row = run(dict(system.spec, concurrency=n, background_load=load))
    except Exception as e:
        reason = str(e) if isinstance(e, RunFailed) else f"{type(e).__name__}: {e}"
        log(f"  {system.label} n={n} load {load} failed: {reason}")
        return {"failed": reason}
    row.update(bandwidth)
    row["pct_of_read"] = 100 * row["decode_gbs"] / row["read_gbs"]
    log(f"  n={n:<3} load {load} {system.label:<30} {row['tok_s']:8.1f} tok/s  "
        f"TTFT {row['ttft_ms']:7.1f} ms  ITL {row['itl_ms']:6.2f} ms")
    return row


def run_rounds(systems: list[System], concurrency: list[int], repeat: int, loads: list[int],
               run=run_worker, measure=measure_bandwidth, log=print) -> tuple[dict, list[dict]]:
    """Every system at every concurrency and load, `repeat` rounds round robin, each round opening
    with a bandwidth measurement per load (under that load). Returns ({(system index, concurrency,
    load): one entry per round, a result or {"failed": reason}}, [each round's bandwidth]); a
    system that fails at a concurrency is not run there again."""
    runs: dict[tuple[int, int, int], list[dict]] = {}
    rounds = []
    for n in concurrency:
        failed = {i: s.failed for i, s in enumerate(systems)}
        for r in range(repeat):
            bandwidth = {}
            for load in loads:
                with bench_load.background_load(load):
                    bandwidth[load] = measure()
            rounds.append({"concurrency": n, "round": r, "bandwidth": bandwidth})
            log(f"round {r + 1}/{repeat}, {n} requests")
            for i, system in enumerate(systems):
                for load in loads:
                    entry = ({"failed": failed[i]} if failed[i]
                             else _run_one(run, system, n, load, dict(bandwidth[load], round=r), log))
                    failed[i] = entry.get("failed")
                    runs.setdefault((i, n, load), []).append(entry)
    return runs, rounds


def _systems(model: str, engine_kwargs: dict, dtypes: list[str] | None, compare: list[str], base: dict,
             options: dict, log) -> list[System]:
    # With a speculative_config, each dtype runs without it too: the speed-up is paired per round.
    specs = [None, engine_kwargs["speculative_config"]] if engine_kwargs.get("speculative_config") else [None]
    systems = [System("codeinfer", dict(base, system="codeinfer",
                                        engine=dict(engine_kwargs, dtype=d, speculative_config=sc)),
                      f"codeinfer {d}" + (" + speculative" if sc else ""))
               for d in dtypes or [engine_kwargs.get("dtype", "auto")] for sc in specs]
    for peer in compare:
        check_peer(peer, model, options)
    for peer in compare:
        try:
            extra, failed = prepare_peer(peer, model, options), None
        except RunFailed as e:
            extra, failed = {}, str(e)
            log(f"{peer} cannot run: {e}")
        systems.append(System(peer, dict(base, system=peer, **extra), peer, failed))
    return systems


def run_comparison(model: str, engine_kwargs: dict, concurrency: list[int], prompt_len: int,
                   max_tokens: int, compare: list[str], seed: int = 0, dtypes: list[str] | None = None,
                   repeat: int = 1, background_load: int = 0, options: dict | None = None,
                   log=print, workload: str = "random") -> dict:
    """Every system (codeinfer once per dtype) at every concurrency, idle and, with
    background_load > 0, next to that many busy processes, `repeat` rounds round robin; returns
    the rows, the paired speed-ups and the machine facts (engine/tools/bench_report.py formats them).
    options: openvino_precision, openvino_export_python. workload: engine/tools/bench_workloads.py;
    with engine_kwargs["speculative_config"] codeinfer also runs without it, for the speed-up."""
    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
    if not isinstance(background_load, int) or background_load < 0:
        raise ValueError(f"background_load must be an integer >= 0, got {background_load!r}")
    from ..config import load_config
    from ..tokenizer import Tokenizer

    config = load_config(Path(model))
    if prompt_len + max_tokens > config.max_position_embeddings:
        raise ValueError(f"prompt_len {prompt_len} + max_tokens {max_tokens} exceeds the model's context "
                         f"of {config.max_position_embeddings} tokens")
    tok = Tokenizer(Path(model), config.eos_token_id)
    threads = len(os.sched_getaffinity(0))
    base = dict(model=model, prompt_len=prompt_len, max_tokens=max_tokens, seed=seed, threads=threads,
                vocab=min(len(tok), config.vocab_size), pad_id=tok.eos_token_id or 0, workload=workload)
    systems = _systems(model, engine_kwargs, dtypes, compare, base, options or {}, log)
    loads = [0, background_load] if background_load else [0]
    runs, rounds = run_rounds(systems, concurrency, repeat, loads, log=log)
    rows = bench_report.summarize_rows(systems, runs)
    ours = [r for r in rows if r["system"] == "codeinfer"]
    if all(r["failed"] for r in ours):  # a peer's failure is reported; without codeinfer nothing compares
        raise ValueError(f"codeinfer failed: {ours[0]['failed']}")
    return {"rows": rows, "speedups": bench_report.speedups(rows), "rounds": rounds, "threads": threads,
            "workload": workload, "spec_speedups": bench_report.spec_speedups(rows),
            "model": model, "model_name": config.name, "prompt_len": prompt_len, "max_tokens": max_tokens,
            "repeat": repeat, "background_load": background_load}


def _worker_main(spec_json: str) -> int:
    try:
        print(json.dumps(worker(json.loads(spec_json))))
    except Exception as e:  # the parent reports the last stderr line as the reason
        traceback.print_exc()
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    sys.exit("usage: python -m engine.tools.bench --worker SPEC (run `codeinfer bench` instead)")
