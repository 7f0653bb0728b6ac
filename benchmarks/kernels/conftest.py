"""Shared harness of the kernel micro-benchmarks (pytest-benchmark; run with `make bench` or
`pytest benchmarks/kernels --benchmark-only`; `make test` never collects them).

`measure(op, provider, shape, fn, num_bytes)` times fn with warm-up and enough rounds for ~1 s, keeps
median and p20/p80, and the session ends with one table: ms, GB/s (bytes the op must move / median)
and the speed-up of each provider over the torch reference, next to this machine's copy bandwidth.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

_ROWS: list[dict] = []


def copy_bandwidth_gbs(num_bytes: int = 1 << 28) -> float:
    """Best of 5 clones of a 256 MiB tensor, counting read + write."""
    src = torch.empty(num_bytes, dtype=torch.uint8).fill_(1)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        src.clone()
        best = min(best, time.perf_counter() - start)
    return 2 * num_bytes / best / 1e9


@pytest.fixture
def measure(benchmark):
    def run(op: str, provider: str, shape: str, fn, num_bytes: int) -> None:
        fn()  # warm-up (thread pools, page faults)
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        rounds = max(3, min(100, int(1.0 / max(once, 1e-6))))
        benchmark.group = f"{op} {shape}"
        benchmark.extra_info.update(op=op, provider=provider, shape=shape, bytes=num_bytes)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
        data = sorted(benchmark.stats.stats.data)
        median = statistics.median(data)
        _ROWS.append(dict(op=op, provider=provider, shape=shape, median=median,
                          p20=data[int(0.2 * (len(data) - 1))], p80=data[int(0.8 * (len(data) - 1))],
                          gbs=num_bytes / median / 1e9))
    return run


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"kernel benchmarks ({torch.get_num_threads()} threads; copy bandwidth {copy_bandwidth_gbs():.1f} GB/s)")
    write(f"{'op':<18} {'shape':<26} {'provider':<8} {'median ms':>10} {'p20-p80 ms':>17} {'GB/s':>7} {'vs torch':>9}")
    ref = {(r["op"], r["shape"]): r["median"] for r in _ROWS if r["provider"] == "torch"}
    for r in sorted(_ROWS, key=lambda r: (r["op"], r["shape"], r["provider"] != "torch")):
        base = ref.get((r["op"], r["shape"]))
        ratio = f"{base / r['median']:.1f}x" if base else "-"
        write(f"{r['op']:<18} {r['shape']:<26} {r['provider']:<8} {r['median'] * 1e3:>10.3f} "
              f"{r['p20'] * 1e3:>8.3f}-{r['p80'] * 1e3:<8.3f} {r['gbs']:>7.2f} {ratio:>9}")
