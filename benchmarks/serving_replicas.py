"""Serving benchmark of engine replicas (not a test): one engine with 2 threads against 2 Ray Serve
replicas with 1 thread each, on this machine, and the prefix-affinity router against Ray Serve's
default one.

1. Load (benchmarks/serving.py's closed loop): throughput, TTFT and ITL p50/p99, concurrency
   1, 8, 32; the single engine and the 2 replicas interleaved level by level.
2. Keystrokes of several editors at once: each has its own file (a slice of this repository's
   sources) and asks for a completion after every keystroke, its prompt the file prefix plus
   one more token each time. Prefix-cache hit rate (prompt tokens found in the cache / looked
   up, summed over replicas) and TTFT, for the single engine, 2 replicas with affinity and 2
   replicas with the default router. --num-kv-blocks sizes each replica's cache, the single
   engine gets twice that (the same memory in all): when the editors' files fit the two caches
   together but not one, only affinity keeps them cached.

    python -m benchmarks.serving_replicas [--model DIR] [--editors 8] [--num-kv-blocks 160]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

import httpx

from benchmarks.serving import (Server, add_load_args, load_level, load_prompts, model_and_sources, pct,
                                stream_one, warm_up, write_json)


def wait_replicas(server: Server, num_replicas: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        if len(re.findall(r"^codeinfer_replica_info\{", text, re.M)) == num_replicas:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{num_replicas} replicas not up in {timeout} s")


def cache_counters(url: str) -> tuple[float, float]:
    """(prompt tokens looked up, found) in the prefix cache, summed over the replicas."""
    text = httpx.get(url + "/metrics", timeout=10).text
    value = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
    return value("codeinfer_prefix_cache_queries_total"), value("codeinfer_prefix_cache_hits_total")


async def editors(url: str, files: list[list[int]], prefix_tokens: int, keystrokes: int,
                  max_tokens: int) -> dict:
    """Every editor types `keystrokes` tokens into its file, one request per keystroke."""
    ttfts = []

    async def editor(client, ids):
        for i in range(keystrokes):
            body = {"prompt": ids[:prefix_tokens + i + 1], "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True}
            ttfts.append((await stream_one(client, body))[0])

    queries, hits = cache_counters(url)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(editor(client, ids) for ids in files))
        elapsed = time.perf_counter() - start
    new_queries, new_hits = cache_counters(url)
    looked_up = new_queries - queries
    return {"requests": len(ttfts), "prefix_cache_hit_rate": (new_hits - hits) / looked_up,
            "ttft_p50_ms": pct(ttfts, 50) * 1e3, "ttft_p99_ms": pct(ttfts, 99) * 1e3,
            "requests_per_s": len(ttfts) / elapsed}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_args(parser)
    parser.add_argument("--editors", type=int, default=8)
    parser.add_argument("--prefix-tokens", type=int, default=400)
    parser.add_argument("--keystrokes", type=int, default=16)
    parser.add_argument("--keystroke-max-tokens", type=int, default=4)
    parser.add_argument("--num-kv-blocks", type=int, default=160,
                        help="KV blocks of each replica (the single engine: twice as many)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir, _, tokenizer, ids = model_and_sources(args.model)
    span = args.prefix_tokens + args.keystrokes
    files = [ids[i * 3 * span:i * 3 * span + span] for i in range(args.editors)]
    prompts = load_prompts(tokenizer, ids, args.prompt_tokens)
    blocks = str(args.num_kv_blocks)
    replicas = ["--dtype", args.dtype, "--num-kv-blocks", blocks, "--num-replicas", "2",
                "--threads-per-replica", "1"]
    systems = {"1x2": ["--dtype", args.dtype, "--num-kv-blocks", str(2 * args.num_kv_blocks),
                       "--threads", "2"],
               "2x1 affinity": replicas,
               "2x1 default router": [*replicas, "--request-router", "default"]}
    results: dict = {"model": model_dir.name, "args": vars(args), "load": [], "keystroke": {}}

    def keystroke_run(name: str, url: str) -> None:
        warm_up(url, prompts)
        row = asyncio.run(editors(url, files, args.prefix_tokens, args.keystrokes,
                                  args.keystroke_max_tokens))
        results["keystroke"][name] = row
        print(f"keystroke {name}:", json.dumps(row), flush=True)

    # One Ray instance at a time: the single engine runs beside the affinity replicas (load
    # levels interleaved), then beside the default-router replicas.
    single = Server(args.model, *systems["1x2"])
    try:
        for name in ("2x1 affinity", "2x1 default router"):
            server = Server(args.model, *systems[name])
            try:
                wait_replicas(server, 2)
                if name == "2x1 affinity":
                    for level in map(int, args.concurrency.split(",")):
                        for system, url in (("1x2", single.url), (name, server.url)):
                            row = asyncio.run(load_level(url, prompts, level, level *
                                                         args.requests_per_client, args.max_tokens))
                            results["load"].append({"system": system, **row})
                            print(system, json.dumps(row), flush=True)
                    keystroke_run("1x2", single.url)
                keystroke_run(name, server.url)
            finally:
                server.close()
    finally:
        single.close()
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
