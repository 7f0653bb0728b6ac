"""The kernels' thread count on a shared CPU: as many threads as the cores other work leaves free.

An OpenMP team meets at a barrier after every parallel op, so when another process takes a core
the thread that lost it stalls the whole team, dozens of times per token. Measured on a 2-core
machine (CodeGen-350M shape, int8, one request, benchmarks/shared_cpu.py) one thread beside one
busy process generates 1.3x as fast as two threads do, 1.7x with libgomp's default spin. So once per step the governor reads the kernel's instantaneous count
of runnable threads on the machine (the fourth field of /proc/loadavg), takes off this engine's
own (the caller, and any of its OpenMP workers still spinning after the last op), and gives the
next steps the cores that leaves, between 1 and max_threads. libgomp's OMP_DYNAMIC makes the same
choice from the 1-minute load average, which lags a build that starts and stops by a minute.

A moving average over the readings and a margin before each change keep a short burst of other
work (a keystroke in an editor) from moving the count. Steps of many rows (prefill) keep every
thread: each of their ops is long enough that a stall at its barrier costs little, and a second
thread's share of a loaded CPU is worth more (CodeGen-350M shape, 4 x 128-token prefill beside 3
busy processes: 4.9 s on 2 threads against 7.3 s on 1; beside 1, 3.3 s against 3.7 s).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

import torch

from .. import kernel_package

LOADAVG = "/proc/loadavg"


def read_runnable(path: str = LOADAVG) -> int | None:
    """Runnable threads on the machine now, the caller included; None where the kernel does not
    say (no /proc, or another format)."""
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return None


def is_running(tid: int) -> bool:
    """Whether thread `tid` of this process is runnable (state R); False if it is gone."""
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            # "tid (comm) state ...": comm may hold spaces and parentheses.
            return f.read().rpartition(b")")[2].split()[0] == b"R"
    except (OSError, IndexError):
        return False


class OtherLoad:
    """Runnable threads on the machine that are not this engine's: the machine's count less the
    caller and those of its OpenMP workers that are running (spinning down after a parallel op, as
    libgomp's default spin count keeps them for milliseconds when torch was imported first)."""

    def __init__(self, max_threads: int):
        self.max_threads = max_threads
        self._caller, self._workers = None, []

    def workers(self) -> list[int]:
        """The calling thread's OpenMP workers: libgomp gives every thread that starts parallel
        regions its own pool, so they are looked up again when another thread steps."""
        caller = threading.get_native_id()
        if caller != self._caller:
            try:
                team = kernel_package.load("cpu").team_thread_ids(self.max_threads)
            except ImportError:  # no C++ kernels built: torch's workers are not told apart
                team = [caller]
            self._caller, self._workers = caller, team[1:]
        return self._workers

    def __call__(self) -> int | None:
        runnable = read_runnable()
        if runnable is None:
            return None
        return max(0, runnable - 1 - sum(map(is_running, self.workers())))


class ThreadGovernor:
    """Sets torch's (and so the C++ kernels') OpenMP thread count for the calling thread.

    update() once per step: at most one reading per `interval_s`. `dynamic=False` (or a machine
    without the runnable count, or max_threads 1) keeps max_threads throughout."""

    # How far the averaged free cores must move past the current count before it changes.
    MARGIN = 0.75
    # Steps of at least this many rows run on max_threads whatever the load.
    GEMM_BOUND_ROWS = 64
    # Weight of the newest reading in the moving average.
    WEIGHT = 0.3

    def __init__(self, max_threads: int, dynamic: bool = True, num_cpus: int | None = None,
                 others: Callable[[], int | None] | None = None, interval_s: float = 0.02,
                 clock: Callable[[], float] = time.monotonic):
        """others: the count of other runnable threads (default: OtherLoad), None when unknown."""
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        self.max_threads = max_threads
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.interval_s, self.clock = interval_s, clock
        dynamic = dynamic and max_threads > 1 and read_runnable() is not None
        self.others = (others or OtherLoad(max_threads)) if dynamic else None
        self.dynamic = dynamic
        self.threads = max_threads  # for the steps of few rows
        self._applied = max_threads
        self._others = 0.0        # moving average of the other runnable threads
        self._next = 0.0          # clock time of the next reading

    def apply(self, threads: int | None = None) -> None:
        """Make the calling thread's kernels use `threads` (default: the current count)."""
        self._applied = self.threads if threads is None else threads
        torch.set_num_threads(self._applied)

    def for_step(self, num_rows: int) -> int:
        """Set the thread count for a step of num_rows rows (forward-pass rows); the count."""
        wanted = self.max_threads if num_rows >= self.GEMM_BOUND_ROWS else self.threads
        if wanted != self._applied:
            self.apply(wanted)
        return wanted

    def update(self) -> int:
        """Read the load if it is time, change the count for steps of few rows if it moved far
        enough (for_step applies it); the count."""
        if not self.dynamic:
            return self.threads
        now = self.clock()
        if now < self._next:
            return self.threads
        self._next = now + self.interval_s
        others = self.others()
        if others is None:
            return self.threads
        self._others += self.WEIGHT * (others - self._others)
        free = self.num_cpus - self._others
        if free >= self.threads + self.MARGIN or free <= self.threads - self.MARGIN:
            self.threads = min(self.max_threads, max(1, round(free)))
        return self.threads
