"""OS-level isolation for untrusted programs: the bubblewrap (`bwrap`) command line.

Each program runs in its own namespaces (user when not root, pid, network, ipc, uts, cgroup), as a
uid that owns nothing, on a root that is an empty read-only tmpfs with only these bound in,
read-only: /usr (and the /bin, /lib, ... entries of the host root that point into it), the Python
installation that runs the harness, the dynamic loader cache, a fresh /proc of its own pid
namespace and a minimal /dev. The only writable place is /sandbox, a fresh size-capped tmpfs that
vanishes with the program. No home directory, no /etc beyond the loader cache, no project
checkout, no network (its own empty network namespace: not even the host's loopback).

When the evaluator runs as root, bwrap keeps just the capabilities to change uid, and `setpriv`
drops the program to its own uid with no capabilities and no_new_privs before Python starts (a
user namespace would map the sandbox uid back to root outside). Otherwise bwrap maps the program
to uid 65534 inside a user namespace of its own.
"""
import functools
import os
import shutil
import subprocess
import sys

BWRAP_PACKAGE = "bubblewrap"
NOBODY = 65534
SANDBOX_DIR = "/sandbox"
CHILD_PATH = "/run/codeinfer/child.py"
# Top-level host entries that merged-/usr systems make symlinks (or small dirs) into /usr.
_ROOT_ENTRIES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class IsolationUnavailable(RuntimeError):
    """The OS isolation tool is missing or does not work on this machine."""


def python_executable() -> str:
    """The interpreter that runs sandboxed programs: this Python's base installation (no venv)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _python_roots() -> list:
    """Directories of the Python installation to bind (the ones /usr does not already cover)."""
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
             os.path.dirname(os.path.dirname(python_executable()))}
    return sorted(r for r in roots if not (r == "/usr" or r.startswith("/usr/")))


def _root_entries() -> list:
    args = []
    for name in _ROOT_ENTRIES:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _bind_ro(path: str, flag: str = "--ro-bind") -> list:
    """Bind `path` read-only, its parent directories created traversable (bwrap would make
    them 0700, which the unprivileged sandbox uid could not enter)."""
    args, parent = [], os.path.dirname(path)
    while parent not in ("/", ""):
        args = ["--perms", "0755", "--dir", parent] + args
        parent = os.path.dirname(parent)
    return args + [flag, path, path]


def bwrap_command(child_file: str, uid: int, tmpfs_bytes: int) -> list:
    """argv that runs `python -I -B child_file` isolated, reading its job on stdin.

    uid: the sandbox uid when the evaluator is root (one per concurrent program, so per-uid
    limits such as RLIMIT_NPROC are per program); ignored otherwise (65534 in a user namespace).
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise IsolationUnavailable(
            f"the sandbox needs bubblewrap ('bwrap'); install the {BWRAP_PACKAGE} package "
            f"(apt-get install {BWRAP_PACKAGE}) or pass --unsafe-no-isolation to run model "
            "output without OS isolation")
    as_root = os.geteuid() == 0
    argv = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if as_root:
        argv += ["--cap-drop", "ALL"] + [a for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
                                         for a in ("--cap-add", cap)]
    else:
        argv += ["--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    argv += ["--ro-bind", "/usr", "/usr", *_root_entries(),
             *_bind_ro("/etc/ld.so.cache", "--ro-bind-try")]
    for root in _python_roots():
        argv += _bind_ro(root)
    argv += ["--perms", "0755", "--dir", os.path.dirname(CHILD_PATH),
             "--ro-bind", child_file, CHILD_PATH, "--proc", "/proc", "--dev", "/dev",
             # the program's own tmpfs, writable by its uid (nobody else is in this mount ns)
             "--perms", "0777", "--size", str(tmpfs_bytes), "--tmpfs", SANDBOX_DIR, "--remount-ro", "/",
             "--chdir", SANDBOX_DIR, "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
             "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", SANDBOX_DIR,
             "--setenv", "TMPDIR", SANDBOX_DIR, "--setenv", "OMP_NUM_THREADS", "1", "--"]
    if as_root:
        argv += ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
    return argv + [python_executable(), "-I", "-B", CHILD_PATH]


@functools.lru_cache(maxsize=1)
def check_isolation(child_file: str) -> None:
    """Run one trivial isolated program; raise IsolationUnavailable saying why when it fails
    (bwrap missing, or namespaces refused, as in some unprivileged containers)."""
    argv = bwrap_command(child_file, NOBODY, 1 << 20)
    probe = argv[:-1] + ["-c", "pass"]  # the same sandbox and interpreter, no harness
    try:
        done = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IsolationUnavailable(f"bwrap could not start a sandbox: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        raise IsolationUnavailable(f"bwrap could not start a sandbox: {reason[0]}; pass "
                                   "--unsafe-no-isolation to run without OS isolation")
