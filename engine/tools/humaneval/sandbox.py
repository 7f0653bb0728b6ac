"""Run untrusted programs: one fresh Python process per program, isolated by the OS.

Layers, outermost first:
  * bubblewrap namespaces (engine.tools.humaneval.isolation): own uid, pid, network, ipc and uts
    namespaces, a read-only filesystem with only /usr and the Python installation bound in, and a
    fresh size-capped tmpfs as the only writable directory;
  * a separate process group, killed as a whole at the wall-clock timeout (plus a grace period);
    the sandbox's pid namespace dies with it;
  * resource limits set by the harness before the program runs: RLIMIT_AS/DATA (memory),
    RLIMIT_CPU, RLIMIT_NPROC (processes and threads of its uid), RLIMIT_FSIZE (file size).
The harness (engine/tools/humaneval/_child.py) reports on the child's stdout, which goes to an unlinked
temporary file (capped by RLIMIT_FSIZE), so a program that writes without end cannot fill the
parent's memory. `isolation_enabled=False` (`--unsafe-no-isolation`) keeps only the last two layers.
"""
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import _child, isolation

DEFAULT_TIMEOUT = 3.0
DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_FILE_BYTES = 16 << 20
DEFAULT_MAX_PROCESSES = 1  # RLIMIT_NPROC: the program may start no process or thread
_TMPFS_BYTES = 64 << 20
_KILL_GRACE_S = 1.0
_REPORT_TAIL_BYTES = 400
# Root runs each concurrent program as a uid of its own from here: no account owns these.
_ROOT_UID_BASE = 1_000_000_000


@dataclass
class ExecResult:
    passed: bool
    result: str  # "passed" | "timed out" | "failed: ..."


def check_isolation() -> None:
    """Raise isolation.IsolationUnavailable (saying what to install) when bwrap cannot run."""
    isolation.check_isolation(_child.__file__)


def run_program(program: str, timeout: float = DEFAULT_TIMEOUT,
                memory_bytes: int = DEFAULT_MEMORY_BYTES,
                file_bytes: int = DEFAULT_FILE_BYTES, isolation_enabled: bool = True,
                uid: int = _ROOT_UID_BASE) -> ExecResult:
    """Run `program` (Python source) in a fresh sandboxed interpreter; passed = ran to the end.

    uid: the sandbox uid when running as root; concurrent programs need distinct uids.
    Raises isolation.IsolationUnavailable when isolation is enabled and bwrap cannot run.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    job = json.dumps({"program": program, "timeout": timeout, "memory_bytes": memory_bytes,
                      "file_bytes": file_bytes, "max_processes": DEFAULT_MAX_PROCESSES})
    if isolation_enabled:
        check_isolation()
        argv = isolation.bwrap_command(_child.__file__, uid, _TMPFS_BYTES)
    else:
        argv = [sys.executable, "-I", "-B", _child.__file__]
    # bwrap gives an isolated program its own tmpfs; an unisolated one gets a fresh host directory.
    workdir = (contextlib.nullcontext() if isolation_enabled
               else tempfile.TemporaryDirectory(prefix="codeinfer-sandbox-"))
    with tempfile.TemporaryFile() as report, workdir as cwd:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.PIPE,
            stdout=report, stderr=subprocess.DEVNULL, start_new_session=True,
            env={"PATH": os.defpath, "LANG": "C.UTF-8"})
        timed_out = False
        try:
            proc.communicate(job.encode(), timeout=timeout + _KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
        return _verdict(_tail(report), timed_out, proc.returncode)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole process group (anything it may have started) and reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(report) -> str:
    size = report.seek(0, os.SEEK_END)
    report.seek(max(0, size - _REPORT_TAIL_BYTES))
    return report.read().decode("utf-8", "replace")


def _verdict(report: str, timed_out: bool, returncode: int) -> ExecResult:
    lines = report.strip().splitlines()
    last = lines[-1] if lines else ""
    if returncode == 0 and last == "passed" and not timed_out:
        return ExecResult(True, "passed")
    # bwrap exits with 128 + the signal that killed the program; unisolated, Popen gives -signal.
    if timed_out or last == "timed out" or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return ExecResult(False, "timed out")
    if last.startswith("failed: "):
        return ExecResult(False, last[:300])
    return ExecResult(False, f"failed: sandbox exit status {returncode}")


def run_programs(programs: list, timeout: float = DEFAULT_TIMEOUT, workers: int | None = None,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES, progress=None,
                 isolation_enabled: bool = True) -> list:
    """Run many programs in parallel (a thread per running child); results in input order.

    progress: optional callable invoked once per finished program (e.g. a tqdm's update).
    """
    if workers is None:
        workers = default_workers()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if isolation_enabled:
        check_isolation()  # one clear error before any thread starts
    uids = queue.SimpleQueue()
    for slot in range(workers):
        uids.put(_ROOT_UID_BASE + slot)

    def one(program):
        uid = uids.get()
        try:
            result = run_program(program, timeout=timeout, memory_bytes=memory_bytes,
                                 isolation_enabled=isolation_enabled, uid=uid)
        finally:
            uids.put(uid)
        if progress is not None:
            progress()
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, programs))


def default_workers() -> int:
    """Children mostly start up and wait on short tests: two per core keeps the cores busy."""
    return 2 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1)
