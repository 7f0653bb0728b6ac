"""Child side of the sandbox: the harness that runs one program, inside the OS sandbox.

Reads one JSON job from stdin ({"program", "timeout", "memory_bytes", "file_bytes",
"max_processes"}), sets resource limits, runs the program with its own output going to /dev/null
and reports on file descriptor 1: the line "passed" after the program ran to its end, else
"failed: <ExceptionType>: <short message>" or "timed out". The parent counts a pass only for exit
status 0 with "passed" as the report's last line, so a program that exits early (os._exit(0),
SystemExit, a signal) fails.

This harness is not a security boundary: the program runs in its process and can rewrite it, so a
deliberately adversarial program can fake its own verdict (as an always-equal return value fools
any HumanEval harness). The OS sandbox around the process is the boundary; it keeps every program
away from the host, the network, other processes and other programs' verdicts.

This file imports nothing from the engine: it runs with only the Python standard library bound in.
"""
import json
import os
import resource
import signal
import sys

_MESSAGE_CHARS = 200


def _set_limits(job: dict) -> None:
    # SIGXCPU at the soft limit (a timeout); SIGKILL a second later if the program ignores it.
    cpu = int(job["timeout"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        resource.setrlimit(limit, (job["memory_bytes"], job["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_bytes"], job["file_bytes"]))
    # Counted per uid, threads included: each concurrent program runs as a uid of its own.
    resource.setrlimit(resource.RLIMIT_NPROC, (job["max_processes"], job["max_processes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class _Timeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def _short(exc: BaseException) -> str:
    """The exception's type and the start of its message, printable characters only."""
    message = "".join(c if c.isprintable() else " " for c in str(exc)[:_MESSAGE_CHARS])
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def main() -> None:
    job = json.loads(sys.stdin.read())
    report = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the program's own output goes nowhere
        os.dup2(null, fd)
    _set_limits(job)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, job["timeout"])
    try:
        exec(compile(job.pop("program"), "<program>", "exec"), {"__name__": "__main__"})
        result, status = "passed", 0
    except _Timeout:
        result, status = "timed out", 1
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the program too
        result, status = f"failed: {_short(exc)}", 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    os.write(report, f"\n{result}\n".encode("utf-8", "replace"))
    os._exit(status)  # no atexit handlers or finalisers of the program run after the verdict


if __name__ == "__main__":
    main()
