"""GMAC/s of kernels.cpu.int8_linear at decode and prefill shapes (random int8 weights, bf16 rows).

    python benchmarks/kernels/linear_gmacs.py [--threads 1] [--cpu-time]

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


def gmacs(rows: int, n: int, k: int, clock, reps_macs: float = 3e9) -> float:
    packed, colsum = reference.pack_int8_weight(torch.randint(-127, 128, (n, k), dtype=torch.int8))
    scales, x = torch.rand(n) * 0.01, torch.randn(rows, k).bfloat16()
    reps = max(3, int(reps_macs // (rows * n * k)))
    for _ in range(2):
        cpu.int8_linear(x, packed, colsum, scales)
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        for _ in range(reps):
            cpu.int8_linear(x, packed, colsum, scales)
        best = min(best, (clock() - t0) / reps)
    return rows * n * k / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cpu-time", action="store_true", help="divide by CPU time, not wall time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(" | ".join(f"{m}x{n}x{k}: {gmacs(m, n, k, clock):.1f} GMAC/s" for m, n, k in SHAPES))


if __name__ == "__main__":
    main()
