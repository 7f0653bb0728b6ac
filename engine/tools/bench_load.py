"""Background CPU load for `codeinfer bench --background-load N`: N busy-looping processes that stand
in for the editor or build that shares the machine with the engine. A run starts them around its
timed part only and always stops them: on return, on an exception, on Ctrl-C, and (through the
kernel's parent-death signal) even when the process that started them is killed outright."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

# The busy loop asks the kernel to SIGKILL it when the thread that started it exits
# (PR_SET_PDEATHSIG = 1), so not even a SIGKILLed benchmark leaves spinning processes behind; it
# checks its parent afterwards in case the parent died before the request. Done by the child
# itself, after exec: a preexec_fn would run Python between fork and exec in a threaded process.
BUSY_LOOP = """import ctypes, os, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, 9)
    if os.getppid() != int(sys.argv[1]):
        os._exit(0)
while True:
    pass
"""


def start(num: int) -> list[subprocess.Popen]:
    """Start num busy loops; if starting one fails, the ones already started are stopped."""
    if not isinstance(num, int) or num < 0:
        raise ValueError(f"background_load must be an integer >= 0, got {num!r}")
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(num):
            procs.append(subprocess.Popen([sys.executable, "-S", "-c", BUSY_LOOP, str(os.getpid())],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    """Kill and reap every process (SIGKILL: a busy loop holds nothing that needs cleaning up)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


@contextlib.contextmanager
def background_load(num: int):
    """`with background_load(n) as procs:` runs the block with n busy loops beside it."""
    procs = start(num)
    try:
        yield procs
    finally:
        stop(procs)
