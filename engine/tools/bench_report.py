"""What `codeinfer bench` reports from its rounds: one row per (system, concurrency, load) with the
median and range of its rounds, speed-ups paired per round (the ratio of two systems within one
round, then the median and range of those ratios: a machine that slows down between rounds slows
both sides of a ratio alike), the markdown tables, and the plot."""
from __future__ import annotations

import statistics
from pathlib import Path

from . import BENCH_EXTRA

# Per-round figures a row reports as the median over its rounds.
MEDIAN_FIELDS = ("ttft_ms", "itl_ms", "decode_gbs", "pct_of_read", "read_gbs", "copy_gbs", "load_s")


def median_range(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of a non-empty list."""
    return statistics.median(values), min(values), max(values)


def paired_ratio(numerators: list[float | None], denominators: list[float | None]) -> dict | None:
    """Per-round ratios a[r] / b[r] over the rounds where both ran (None: failed), as
    {median, min, max, rounds}; None when no round has both."""
    ratios = [a / b for a, b in zip(numerators, denominators) if a is not None and b]
    if not ratios:
        return None
    med, lo, hi = median_range(ratios)
    return {"median": med, "min": lo, "max": hi, "rounds": len(ratios)}


def _per_round(entries: list[dict], key: str) -> list[float | None]:
    return [e.get(key) for e in entries]


def summarize_rows(systems, runs: dict) -> list[dict]:
    """One row per (system index, concurrency, load) of run_rounds' output, in run order."""
    rows, idle = [], {}
    for (i, n, load), entries in runs.items():
        system = systems[i]
        ok = [e for e in entries if "failed" not in e]
        failed = next((e["failed"] for e in entries if "failed" in e), None)
        row = {"index": i, "system": system.name, "label": system.label, "concurrency": n, "load": load,
               "failed": failed, "tok_s_runs": _per_round(entries, "tok_s"), "runs": entries}
        if ok:
            med, lo, hi = median_range([e["tok_s"] for e in ok])
            row.update(label=f"{system.name} {ok[0]['dtype']}", dtype=ok[0]["dtype"], tok_s=med,
                       tok_s_min=lo, tok_s_max=hi, ttft_method=ok[0]["ttft_method"],
                       notes=ok[0].get("notes"), peak_rss_mb=max(e["peak_rss_mb"] for e in ok),
                       **{k: statistics.median(e[k] for e in ok) for k in MEDIAN_FIELDS})
            if ok[0].get("spec"):  # speculative decoding: its label, and its counters over the rounds
                row["label"] += " + speculative"
                row["spec"] = {k: statistics.median(e["spec"][k] for e in ok) for k in ok[0]["spec"]}
        if load == 0:
            idle[(i, n)] = row
        elif (i, n) in idle:
            row["vs_idle"] = paired_ratio(row["tok_s_runs"], idle[(i, n)]["tok_s_runs"])
        rows.append(row)
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """codeinfer's tokens/s over every peer's at each concurrency and load, paired per round."""
    out = []
    for ours in rows:
        if ours["system"] != "codeinfer" or ours["failed"]:
            continue
        for peer in rows:
            same_config = (peer["concurrency"], peer["load"]) == (ours["concurrency"], ours["load"])
            if peer["system"] == "codeinfer" or peer["failed"] or not same_config:
                continue
            ratio = paired_ratio(ours["tok_s_runs"], peer["tok_s_runs"])
            if ratio:
                out.append(dict(ratio, concurrency=ours["concurrency"], load=ours["load"],
                                ours=ours["label"], peer=peer["label"]))
    return out


def spec_speedups(rows: list[dict]) -> list[dict]:
    """Each speculative codeinfer row's tokens/s over the same dtype without speculation, paired
    per round, with its acceptance counters."""
    out = []
    for spec in rows:
        if spec["failed"] or not spec.get("spec"):
            continue
        for plain in rows:
            same = (plain["concurrency"], plain["load"], plain.get("dtype")) == (
                spec["concurrency"], spec["load"], spec.get("dtype"))
            if plain["system"] != "codeinfer" or plain.get("spec") or plain["failed"] or not same:
                continue
            ratio = paired_ratio(spec["tok_s_runs"], plain["tok_s_runs"])
            if ratio:
                out.append(dict(ratio, concurrency=spec["concurrency"], load=spec["load"],
                                ours=spec["label"], **spec["spec"]))
    return out


def _spec_table(result: dict) -> list[str]:
    rows = result.get("spec_speedups") or []
    if not rows:
        return []
    lines = [f"speculative decoding, {result.get('workload', 'random')} prompts: tokens/s with / without, "
             "paired per round; acceptance over the timed runs", "",
             "| requests | load | codeinfer | speed-up | draft tokens | accepted | acceptance | "
             "mean accepted length |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {_load_name(r['load'])} | {r['ours']} | {_ratio(r)} | "
                     f"{r['draft_tokens']:.0f} | {r['accepted_tokens']:.0f} | "
                     f"{100 * r['acceptance_rate']:.1f}% | {r['mean_accepted_length']:.2f} |")
    return lines


def _load_name(load: int) -> str:
    return "idle" if int(load) == 0 else f"+{load} busy"  # int: JSON turns the keys into strings


def _ratio(r: dict | None) -> str:
    return "" if not r else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def _bandwidth_lines(result: dict) -> list[str]:
    lines = []
    for load in sorted({load for r in result["rounds"] for load in r["bandwidth"]}):
        read = [r["bandwidth"][load]["read_gbs"] for r in result["rounds"]]
        copy = [r["bandwidth"][load]["copy_gbs"] for r in result["rounds"]]
        lines.append(f"memory bandwidth, {_load_name(load)}, {len(read)} rounds: read-only "
                     f"{min(read):.1f}-{max(read):.1f} GB/s, copy (read + write) "
                     f"{min(copy):.1f}-{max(copy):.1f} GB/s")
    return lines


def _main_table(rows: list[dict]) -> list[str]:
    lines = ["| requests | load | system | tokens/s median (min-max) | loaded / idle | TTFT ms | ITL ms | "
             "decode GB/s (% of read) | peak RSS MB | load s |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['concurrency']} | {_load_name(r['load'])} | {r['label']} |"
        if "tok_s" not in r:
            reason = r["failed"] if len(r["failed"]) <= 60 else r["failed"][:57] + "..."  # whole in the notes
            lines.append(f"{head} failed: {reason} | | | | | | |")
            continue
        spread = f" ({r['tok_s_min']:.1f}-{r['tok_s_max']:.1f})" if len(r["tok_s_runs"]) > 1 else ""
        lines.append(f"{head} {r['tok_s']:.1f}{spread} | {_ratio(r.get('vs_idle'))} | {r['ttft_ms']:.1f} | "
                     f"{r['itl_ms']:.2f} | {r['decode_gbs']:.1f} ({r['pct_of_read']:.0f}%) | "
                     f"{r['peak_rss_mb']:.0f} | {r['load_s']:.1f} |")
    return lines


def _speedup_table(result: dict) -> list[str]:
    peers = list(dict.fromkeys(s["peer"] for s in result["speedups"]))
    if not peers:
        return []
    lines = ["codeinfer speed-up, paired per round: median (min-max) of the per-round tokens/s ratios", "",
             "| requests | load | codeinfer | " + " | ".join(f"vs {p}" for p in peers) + " |",
             "|---:|---|---|" + "---:|" * len(peers)]
    groups: dict[tuple, dict] = {}
    for s in result["speedups"]:
        groups.setdefault((s["concurrency"], s["load"], s["ours"]), {})[s["peer"]] = s
    for (n, load, ours), by_peer in groups.items():
        lines.append(f"| {n} | {_load_name(load)} | {ours} | "
                     + " | ".join(_ratio(by_peer.get(p)) for p in peers) + " |")
    return lines


def _notes(result: dict) -> list[str]:
    rows = result["rows"]
    one_token = sorted({r["system"] for r in rows if r.get("ttft_method") == "1-token run"})
    lines = [f"TTFT = until every request of the batch has its first token; ITL = (total - TTFT) / "
             f"{result['max_tokens'] - 1}. codeinfer streams (TTFT read in the timed run)."]
    own = sorted({r["system"] for r in rows if r.get("ttft_method") == "perf metrics"})
    if own:
        lines.append(f"{', '.join(own)}: TTFT from its own perf metrics of the timed run.")
    if one_token:
        lines.append(f"{', '.join(one_token)}: no token streaming here, so TTFT = the time of a generate with "
                     "max_new_tokens=1 on prompts of the same shape.")
    lines.append("decode GB/s = bytes the decode steps read (linear weights in their stored dtype with their "
                 "scales, lm_head, one embedding row per token, the KV cache at each step's context, local "
                 "layers their window) / (total - TTFT); % of the same round's read-only bandwidth.")
    lines.append("load s = from starting the system in a fresh process to its first run: its import and its "
                 "model load (the peers from their own converted folders; codeinfer's source is in its note).")
    lines += sorted({f"{r['system']}: {r['notes']}" for r in rows if r.get("notes")})
    lines += sorted({f"{r['label']} failed: {r['failed']}" for r in rows if r["failed"]})
    return lines


def format_table(result: dict) -> str:
    """The bandwidth lines, the main table, the paired speed-ups and the notes, as markdown."""
    load = result["background_load"]
    head = [f"{result['model_name']}: {result['prompt_len']}-token {result.get('workload', 'random')} prompts, "
            f"{result['max_tokens']} new tokens, "
            f"{result['repeat']} round(s), {result['threads']} threads"
            + (f", background load {load} busy processes" if load else "")]
    parts = [head + _bandwidth_lines(result), _main_table(result["rows"]), _speedup_table(result), _spec_table(result),
             _notes(result)]
    return "\n\n".join("\n".join(p) for p in parts if p)


def check_plotting() -> None:
    """ValueError naming the pip command unless matplotlib imports (`codeinfer bench --plot` calls
    this before the run, not after it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display
        import matplotlib.pyplot  # noqa: F401
    except ImportError as e:
        raise ValueError(f"--plot: matplotlib cannot be imported ({e}); {BENCH_EXTRA}") from None


def plot(result: dict, path: str) -> None:
    """tokens/s against concurrency, a line per system and load (loaded dashed); a system that
    failed still gets its legend entry."""
    check_plotting()
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, load in dict.fromkeys((r["index"], r["load"]) for r in result["rows"]):
        mine = [r for r in result["rows"] if (r["index"], r["load"]) == (index, load)]
        pts = [(r["concurrency"], r["tok_s"]) for r in mine if "tok_s" in r]
        label = next((r["label"] for r in mine if "tok_s" in r), mine[0]["label"] + " (failed)")
        label += "" if int(load) == 0 else f", {_load_name(load)}"
        # One colour per system, idle solid and loaded dashed, so each pair reads together.
        ax.plot(*(zip(*pts) if pts else ([], [])), marker="o", color=f"C{index % 10}",
                linestyle="--" if int(load) else "-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("generated tokens/s")
    ax.set_title(Path(result["model"]).name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
