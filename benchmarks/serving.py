"""Serving benchmark (not a test): streamed completions against `codeinfer serve` on loopback.

1. Load: concurrency 1, 8, 32 (closed loop: each client sends its next request when the last
   ends); time to first token (TTFT) and inter-token latency (ITL) p50/p99, output tokens/s.
   With --offline, each level is followed by the same load offline (`codeinfer bench`, the engine
   in its own process), alternating for --repeat rounds, and the server/offline ratios of ITL p50
   and tokens/s are paired per round: what the server keeps of the engine.
2. Keystroke: an editor asking for a completion after every keystroke: the same ~1000-token file
   prefix, a tail one token longer per request, one request at a time; TTFT with prefix caching
   on and off (two servers).

    python -m benchmarks.serving [--model DIR] [--url http://127.0.0.1:8000] [--dtype bfloat16]
                                 [--kv-cache-dtype int8] [--offline --repeat 3]

Tokens per chunk are counted from `logprobs: 0` (a chunk may carry several tokens when the client
reads slower than the engine steps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RUNNER = "import sys; from engine.entrypoints.cli.main import main; sys.exit(main())"


class Server:
    """`codeinfer serve` in a subprocess on a free loopback port."""

    def __init__(self, model: str | None, *extra: str):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile("w+")
        cmd = [sys.executable, "-c", RUNNER, "serve", "--port", str(port), "--log-level", "warning",
               *(["--model", model] if model else []), *extra]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.log.seek(0)
        raise RuntimeError(f"server did not start:\n{self.log.read()}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def stream_one(client: httpx.AsyncClient, body: dict) -> tuple[float, list[float], int]:
    """(TTFT, per-token gaps, output tokens) of one streamed request."""
    start = time.perf_counter()
    ttft, last, gaps, num_tokens = None, None, [], 0
    async with client.stream("POST", "/v1/completions",
                             json={**body, "stream": True, "logprobs": 0}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {await response.aread()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            new = sum(len((c.get("logprobs") or {}).get("tokens", [])) for c in chunk["choices"])
            if new == 0:
                continue
            if ttft is None:
                ttft = now - start
                new_gaps = new - 1                # tokens after the first in the same chunk
                gaps += [0.0] * new_gaps
            else:
                gaps += [(now - last) / new] * new
            last, num_tokens = now, num_tokens + new
    return ttft, gaps, num_tokens


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def warm_up(url: str, prompts: list[str]) -> None:
    """Two short requests before any timing (the first requests of a server pay its start-up)."""
    asyncio.run(load_level(url, prompts[:1], 1, 2, 4))


async def load_level(url: str, prompts: list[str], concurrency: int, num_requests: int,
                     max_tokens: int) -> dict:
    ttfts, gaps, total_tokens = [], [], 0
    counter = iter(range(num_requests))
    limits = httpx.Limits(max_connections=concurrency + 4)

    async def client_loop(client):
        nonlocal total_tokens
        for i in counter:
            body = {"prompt": prompts[i % len(prompts)], "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True}
            ttft, g, n = await stream_one(client, body)
            ttfts.append(ttft)
            gaps.extend(g)
            total_tokens += n

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": num_requests,
            "ttft_p50_ms": pct(ttfts, 50) * 1e3, "ttft_p99_ms": pct(ttfts, 99) * 1e3,
            "itl_p50_ms": pct(gaps, 50) * 1e3, "itl_p99_ms": pct(gaps, 99) * 1e3,
            "output_tok_s": total_tokens / elapsed}


async def keystrokes(url: str, prefix_ids: list[int], tail_ids: list[int], max_tokens: int) -> dict:
    ttfts = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for i in range(len(tail_ids)):
            body = {"prompt": prefix_ids + tail_ids[:i + 1], "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True}
            ttfts.append((await stream_one(client, body))[0])
        metrics = (await client.get("/metrics")).text
    hit_rate = next((float(line.split()[1]) for line in metrics.splitlines()
                     if line.startswith("codeinfer_prefix_cache_hit_rate ")), float("nan"))
    ttfts = ttfts[1:]   # the first request fills the cache in both runs
    return {"requests": len(ttfts), "ttft_p50_ms": pct(ttfts, 50) * 1e3,
            "ttft_p99_ms": pct(ttfts, 99) * 1e3, "ttft_mean_ms": statistics.mean(ttfts) * 1e3,
            "prefix_cache_hit_rate": hit_rate}


def offline_level(model: str | None, engine_flags: list[str], concurrency: int, prompt_tokens: int,
                  max_tokens: int) -> dict:
    """The same load offline: `codeinfer bench` in its own process at this concurrency (all requests
    at once, greedy, EOS ignored): its TTFT, ITL and tokens/s."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-c", RUNNER, "bench", "--concurrency", str(concurrency),
               "--prompt-len", str(prompt_tokens), "--max-tokens", str(max_tokens), "--json", str(out),
               *(["--model", model] if model else []), *engine_flags]
        done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"offline bench failed:\n{done.stdout}{done.stderr}")
        row = json.loads(out.read_text())["rows"][0]
    return {"concurrency": concurrency, "ttft_ms": row["ttft_ms"], "itl_ms": row["itl_ms"],
            "output_tok_s": row["tok_s"]}


def paired(server_rows: list[dict], offline_rows: list[dict]) -> dict:
    """Per-round server/offline ratios of ITL p50 and tokens/s: medians and ranges."""
    itl = [s["itl_p50_ms"] / o["itl_ms"] for s, o in zip(server_rows, offline_rows)]
    tok = [s["output_tok_s"] / o["output_tok_s"] for s, o in zip(server_rows, offline_rows)]
    return {"itl_ratio": statistics.median(itl), "itl_ratio_range": [min(itl), max(itl)],
            "tok_s_ratio": statistics.median(tok), "tok_s_ratio_range": [min(tok), max(tok)],
            "server_itl_p50_ms": statistics.median(r["itl_p50_ms"] for r in server_rows),
            "offline_itl_ms": statistics.median(r["itl_ms"] for r in offline_rows),
            "server_tok_s": statistics.median(r["output_tok_s"] for r in server_rows),
            "offline_tok_s": statistics.median(r["output_tok_s"] for r in offline_rows)}


def source_text() -> str:
    """Real Python to use as prompts: this repository's engine sources."""
    return "\n".join(p.read_text() for p in sorted((REPO / "engine").rglob("*.py")))


def model_and_sources(model: str | None):
    """(model_dir, config, tokenizer, ids): the checkpoint (default: the bundled model) and this
    repository's engine sources in its tokens."""
    from engine.config import load_config
    from engine.core.llm_engine import default_model_dir
    from engine.tokenizer import Tokenizer

    model_dir = Path(model) if model else default_model_dir()
    config = load_config(model_dir)
    tokenizer = Tokenizer(model_dir, config.eos_token_id)
    return model_dir, config, tokenizer, tokenizer.encode(source_text())


def load_prompts(tokenizer, ids: list[int], prompt_tokens: int, num_prompts: int = 64) -> list[str]:
    """Up to num_prompts consecutive prompt_tokens-token slices of ids, as text."""
    return [tokenizer.decode(ids[i:i + prompt_tokens])
            for i in range(0, min(num_prompts * prompt_tokens, len(ids) - prompt_tokens), prompt_tokens)]


def add_load_args(parser: argparse.ArgumentParser) -> None:
    """The model and the closed-loop load flags of the serving benchmarks, and --json."""
    parser.add_argument("--model", default=None, help="checkpoint dir (default: bundled model)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the results here")


def write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_args(parser)
    parser.add_argument("--url", default=None, help="benchmark a running server instead "
                        "(the keystroke on/off comparison then needs --url-no-cache)")
    parser.add_argument("--url-no-cache", default=None)
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="the engine's CPU threads, server and offline alike (default: the engine's)")
    parser.add_argument("--engine-flag", action="append", default=[], metavar="FLAG",
                        help="another engine flag for the server and the offline run alike, e.g. "
                             "--engine-flag=--no-dynamic-threads (repeatable)")
    parser.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                        help="a `codeinfer serve` flag for the server only, e.g. "
                             "--server-flag=--no-engine-process (repeatable)")
    parser.add_argument("--offline", action="store_true",
                        help="also run each load level offline (codeinfer bench) and pair the ratios")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of each load level (with --offline: "
                        "server and offline alternating)")
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--keystrokes", type=int, default=24,
                        help="keystroke requests after the load levels (0: none)")
    parser.add_argument("--keystroke-max-tokens", type=int, default=8)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args(argv)

    model_dir, config, tokenizer, ids = model_and_sources(args.model)
    context = config.max_position_embeddings
    results: dict = {"model": model_dir.name, "dtype": args.dtype, "load": [], "keystroke": {}}
    engine_args = ["--dtype", args.dtype, "--kv-cache-dtype", args.kv_cache_dtype,
                   *(["--threads", str(args.threads)] if args.threads else []), *args.engine_flag]
    server_args = [*engine_args, *args.server_flag]
    if args.offline and args.url:
        parser.error("--offline runs its own server (leave out --url)")

    prompt_tokens = min(args.prompt_tokens, context - args.max_tokens - 1)
    prompts = load_prompts(tokenizer, ids, prompt_tokens)
    server = None if args.url else Server(args.model, *server_args)
    url = args.url or server.url
    try:
        warm_up(url, prompts)
        for concurrency in ([] if args.skip_load else map(int, args.concurrency.split(","))):
            server_rows, offline_rows = [], []
            for _ in range(args.repeat):
                row = asyncio.run(load_level(url, prompts, concurrency,
                                             concurrency * args.requests_per_client, args.max_tokens))
                server_rows.append(row)
                results["load"].append(row)
                print(json.dumps(row), flush=True)
                if args.offline:
                    offline_rows.append(offline_level(args.model, engine_args, concurrency,
                                                      prompt_tokens, args.max_tokens))
                    print("offline:", json.dumps(offline_rows[-1]), flush=True)
            if args.offline:
                ratios = {"concurrency": concurrency, **paired(server_rows, offline_rows)}
                results.setdefault("server_vs_offline", []).append(ratios)
                print("server / offline:", json.dumps(ratios), flush=True)
        prefix_tokens = min(args.prefix_tokens, context - args.keystrokes - args.keystroke_max_tokens)
        prefix_ids = ids[:prefix_tokens]
        tail_ids = ids[prefix_tokens:prefix_tokens + args.keystrokes]
        results["keystroke"]["prefix_tokens"] = prefix_tokens
        if args.keystrokes > 0:
            results["keystroke"]["on"] = asyncio.run(keystrokes(url, prefix_ids, tail_ids,
                                                                args.keystroke_max_tokens))
            print("keystroke, prefix caching on:", json.dumps(results["keystroke"]["on"]), flush=True)
    finally:
        if server:
            server.close()
    off_server = None if args.url_no_cache or args.url or args.keystrokes <= 0 else Server(
        args.model, *server_args, "--no-prefix-caching")
    off_url = args.url_no_cache or (off_server.url if off_server else None)
    if off_url and args.keystrokes > 0:
        try:
            warm_up(off_url, prompts)
            results["keystroke"]["off"] = asyncio.run(keystrokes(off_url, prefix_ids, tail_ids,
                                                                 args.keystroke_max_tokens))
            print("keystroke, prefix caching off:", json.dumps(results["keystroke"]["off"]))
        finally:
            if off_server:
                off_server.close()
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
