"""GMAC/s of kernels.cpu.int8_linear and int4_linear at decode and prefill shapes (random weights,
bf16 rows).

    python -m benchmarks.kernels.linear_gmacs [--threads 1] [--cpu-time] [--kinds int8,int4] [--group-size 64]

--cpu-time divides by the process's CPU time instead of wall time: with --threads 1 that is the
per-core figure, and it moves much less than wall time when other work shares the machine
(compare builds by alternating runs of this script). Numbers, not a test.
"""
from __future__ import annotations

import argparse
import time

import torch

from kernels import cpu, reference

# (rows, out_features, in_features): decode GEMVs, a small batch, prefill blocks, a long prompt.
SHAPES = [(1, 3072, 1024), (1, 1024, 4096), (8, 4096, 1024), (64, 3072, 1024), (256, 4096, 1024),
          (1900, 1024, 4096)]


def bound_linear(kind: str, n: int, k: int, group_size: int):
    """A bound linear of random weights of `kind` ("int8" or "int4")."""
    if kind == "int4":
        packed, params = reference.quantize_pack_int4(torch.randn(n, k), group_size)
        return cpu.bind_int4_linear(packed, params, k, n)
    packed, colsum = reference.pack_int8_weight(torch.randint(-127, 128, (n, k), dtype=torch.int8))
    return cpu.bind_int8_linear(packed, colsum, torch.rand(n) * 0.01, k)


def gmacs(kind: str, rows: int, n: int, k: int, clock, group_size: int = 64, reps_macs: float = 3e9) -> float:
    linear, x = bound_linear(kind, n, k, group_size), torch.randn(rows, k).bfloat16()
    reps = max(3, int(reps_macs // (rows * n * k)))
    for _ in range(2):
        linear(x)
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        for _ in range(reps):
            linear(x)
        best = min(best, (clock() - t0) / reps)
    return rows * n * k / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cpu-time", action="store_true", help="divide by CPU time, not wall time")
    parser.add_argument("--kinds", default="int8", help="comma-separated: int8, int4")
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size")
    parser.add_argument("--shapes", default=None, help="MxNxK,... (default: the built-in list)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")] if args.shapes else SHAPES
    for kind in args.kinds.split(","):
        print(kind, " | ".join(f"{m}x{n}x{k}: {gmacs(kind, m, n, k, clock, args.group_size):.1f} GMAC/s"
                               for m, n, k in shapes))


if __name__ == "__main__":
    main()
