"""Decode tokens/s with N CPU-bound processes beside the engine, for OpenMP spin settings.

Each setting runs in a fresh process (libgomp reads its environment once), settings round robin:

    python -m benchmarks.shared_cpu /tmp/ckpt/codegen-350m --background 0,1,3 --repeat 2 \
        --setting libgomp:GOMP_SPINCOUNT=300000 --setting engine: --setting passive:OMP_WAIT_POLICY=PASSIVE

300000 is libgomp's own spin count; a setting with no variables gets the engine's default
(GOMP_SPINCOUNT=1000, set when the engine is imported before torch).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

_SPIN_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def measure(model: str, backgrounds: list, requests: list, new_tokens: int) -> dict:
    """In this process: tokens/s per (background processes, requests), int8 + int8 KV, greedy."""
    from engine import LLM, SamplingParams

    llm = LLM(model=model, dtype="int8", kv_cache_dtype="int8")
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
    p.add_argument("--setting", action="append", default=None, metavar="NAME:VAR=VALUE,...")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    backgrounds = [int(x) for x in args.background.split(",")]
    requests = [int(x) for x in args.requests.split(",")]
    if args.worker:
        print(json.dumps(measure(args.model, backgrounds, requests, args.new_tokens)))
        return
    for round_ in range(1, args.repeat + 1):
        for setting in args.setting or ["libgomp:GOMP_SPINCOUNT=300000", "engine:"]:
            name, _, assignments = setting.partition(":")
            env = {k: v for k, v in os.environ.items() if k not in _SPIN_VARS}
            env.update(a.split("=", 1) for a in assignments.split(",") if a)
            out = subprocess.run([sys.executable, __file__, args.model, "--worker",
                                  "--background", args.background, "--requests", args.requests,
                                  "--new-tokens", str(args.new_tokens)],
                                 env=env, capture_output=True, text=True, check=True)
            print(round_, name, out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
