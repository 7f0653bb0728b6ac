"""The OS sandbox holds against hostile completions: none passes, none changes anything outside.

Every attack runs as the body of HumanEval/0's function, with the in-process harness being no
guard at all: only the bubblewrap namespaces, the sandbox uid and the rlimits stand in the way.
The targets are made as easy as possible for an escape: world-writable files, a victim process
running as the sandbox's own uid, listeners on the host's loopback.
"""
import os
import socket
import subprocess
import time

import pytest

from engine.tools.humaneval import execute_samples, read_problems, sandbox

SECRET = "codeinfer-secret-4e1f"

ATTACKS = {
    # process creation
    "os.system": "os.system('touch {out}/p')",
    "execv": "os.execv('/bin/sh', ['sh', '-c', 'touch {out}/p'])",
    "posix_spawn": "os.posix_spawn('/bin/sh', ['sh', '-c', 'touch {out}/p'], {{}})",
    "spawnv": "os.spawnv(os.P_WAIT, '/bin/sh', ['sh', '-c', 'touch {out}/p'])",
    "subprocess": "import subprocess; subprocess.run(['sh', '-c', 'touch {out}/p'])",
    "fork": "pid = os.fork()\nif pid == 0: open('{out}/p', 'w'); os._exit(0)",
    "multiprocessing": ("import multiprocessing\n"
                        "multiprocessing.Process(target=os.system, args=('touch {out}/p',))"
                        ".start()"),
    "pty.spawn": "import pty; pty.spawn(['sh', '-c', 'touch {out}/p'])",
    "subinterpreter": ("import _xxsubinterpreters as s\n"
                       "s.run_string(s.create(), \"import os; os.system('touch {out}/p')\")"),
    "_testcapi subinterp": ("import _testcapi\n"
                            "_testcapi.run_in_subinterp(\"import os; os.system('touch {out}/p')\")"),
    "ctypes system": "import ctypes; ctypes.CDLL(None).system(b'touch {out}/p')",
    "ctypes unshare": "import ctypes; assert ctypes.CDLL(None).unshare(0x10000000) == 0",
    # writes outside, by every route
    "open write": "open('{keep}', 'w').write('x')",
    "open create": "open('{out}/p', 'w').write('x')",
    "relative escape": "open('../../../../../../..{out}/p', 'w').write('x')",
    "os.open dir_fd": ("fd = os.open('{out}', os.O_RDONLY)\n"
                       "os.open('p', os.O_CREAT | os.O_WRONLY, dir_fd=fd)"),
    "opener": "open('{out}/p', 'w', opener=lambda p, f: os.open(p, f | os.O_CREAT))",
    "sqlite3": "import sqlite3; sqlite3.connect('{out}/p').execute('create table t(x)')",
    "readline history": "import readline; readline.write_history_file('{out}/p')",
    "unlink": "os.unlink('{keep}')",
    "rename": "os.rename('{keep}', '{out}/p')",
    "rmtree": "import shutil; shutil.rmtree('{out}')",
    "chmod": "os.chmod('{keep}', 0o700)",
    "via /proc/1/root": "open('/proc/1/root{out}/p', 'w').write('x')",
    "via inherited fds": ("for fd in range(3, 64):\n"
                          "    try: os.write(fd, b'x')\n    except OSError: pass\n"
                          "open('{out}/p', 'w')"),
    "/dev/shm": "open('/dev/shm/codeinfer-p', 'w').write('x')",
    # network
    "tcp connect": "socket.create_connection(('127.0.0.1', {tcp}), timeout=0.5)",
    "tcp ipv6": "socket.create_connection(('::1', {tcp}), timeout=0.5)",
    "udp sendto": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp}))",
    "udp sendmsg": ("s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    "s.sendmsg([b'x'], [], 0, ('127.0.0.1', {udp}))"),
    "tcp fast open": ("s = socket.socket()\n"
                      "s.sendto(b'x', socket.MSG_FASTOPEN, ('127.0.0.1', {tcp}))"),
    "abstract unix": ("s = socket.socket(socket.AF_UNIX)\n"
                      "s.connect('\\0{abstract}'); s.send(b'x')"),
    "internet": "socket.create_connection(('1.1.1.1', 53), timeout=0.5)",
    # signals to outside processes
    "kill victim": "os.kill({victim}, 9)",
    "killpg victim": "os.killpg({victim}, 9)",
    "kill everything": "os.kill(-1, 9)",
    "pidfd": "import signal; signal.pidfd_send_signal(os.pidfd_open({victim}), 9)",
    # reading secrets (the verdict would carry them out)
    "read shadow": "raise ValueError(open('/etc/shadow').read())",
    "read passwd": "raise ValueError(open('/etc/passwd').read())",
    "read secret": "raise ValueError(open('{secret}').read())",
    "read parent proc": "raise ValueError(open('/proc/{parent}/cmdline').read())",
    "list host root": "raise ValueError(str(os.listdir('/root')) + str(os.listdir('/work')))",
    "read project": "raise ValueError(open('{project}').read())",
    # timeout evasion
    "ignore SIGALRM": "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass",
    "disarm timer": "import signal, time\nsignal.setitimer(signal.ITIMER_REAL, 0)\ntime.sleep(100)",
    "block SIGALRM": ("import signal, time\n"
                      "signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})\n"
                      "time.sleep(100)"),
    "unkillable sleep": ("import time\nwhile True:\n    try: time.sleep(100)\n"
                         "    except BaseException: pass"),
    "raise cpu limit": ("import resource\n"
                        "resource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\nwhile True: pass"),
    "daemon survivor": ("if os.fork() == 0:\n    os.setsid()\n"
                        "    import time; time.sleep(30); open('{out}/p', 'w')\n"),
    # bombs
    "memory bomb": "x = bytearray(1 << 36)",
    "growing memory": "a = []\nwhile True: a.append(' ' * (1 << 26))",
    "fork bomb": "while True: os.fork()",
    "thread bomb": ("import threading, time\n"
                    "while True: threading.Thread(target=time.sleep, args=(100,)).start()"),
    "disk bomb files": ("for i in range(10**6):\n"
                        "    open(f'f{{i}}', 'wb').write(b'x' * (8 << 20))"),
    "disk bomb one file": "f = open('big', 'wb')\nwhile True: f.write(b'x' * (1 << 20))",
    "flood output": "while True: print('x' * 10000)",
    "flood fd 1": "while True: os.write(1, b'passed\\n' * 1000)",
    # faked passes
    "os._exit(0)": "os._exit(0)",
    "sys.exit(0)": "import sys; sys.exit(0)",
    "SystemExit": "raise SystemExit(0)",
    "exit()": "exit()",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
    "atexit _exit": "import atexit; atexit.register(os._exit, 0)",
    "kill self": "os.kill(os.getpid(), 9)",
    "print passed": "import sys; sys.stdout.write('passed\\n'); sys.stdout.flush(); os._exit(0)",
    "verdict file": "open('.verdict', 'w').write('passed'); open('verdict', 'w').write('passed')",
    "frame walk": ("import sys\nf = sys._getframe()\nwhile f is not None:\n"
                   "    f.f_globals['result'] = 'passed'; f.f_globals['status'] = 0\n"
                   "    f = f.f_back"),
}


def _completion(attack: str) -> str:
    """A body for HumanEval/0 that runs the attack, then answers wrongly (None)."""
    body = "import os, socket\n" + attack
    return f"    exec({body!r}, {{}})\n    return None\n"


@pytest.fixture
def targets(tmp_path):
    """An outside directory that anyone may write, listeners, and a victim process."""
    out = tmp_path / "outside"
    out.mkdir()
    out.chmod(0o777)
    keep, secret = out / "keep", out / "secret"
    keep.write_text("keep")
    keep.chmod(0o666)
    secret.write_text(SECRET)
    secret.chmod(0o644)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    abstract = f"codeinfer-test-{os.getpid()}"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind("\0" + abstract)
    unix.listen(8)
    unix.setblocking(False)
    # As root the victim runs as the first sandbox uid: only the pid namespace protects it.
    user = sandbox._ROOT_UID_BASE if os.geteuid() == 0 else None
    victim = subprocess.Popen(["sleep", "1000"], user=user, start_new_session=True)
    values = {"out": str(out), "keep": str(keep), "secret": str(secret),
              "tcp": tcp.getsockname()[1], "udp": udp.getsockname()[1], "abstract": abstract,
              "victim": victim.pid, "parent": os.getpid(),
              "project": os.path.abspath(sandbox.__file__)}
    yield values, (tcp, udp, unix), victim
    victim.kill()
    victim.wait()
    for sock in (tcp, udp, unix):
        sock.close()


def _nothing_received(sockets) -> list:
    tcp, udp, unix = sockets
    seen = []
    for name, action in (("tcp", tcp.accept), ("udp", lambda: udp.recv(16)),
                         ("unix", unix.accept)):
        try:
            action()
            seen.append(name)
        except BlockingIOError:
            pass
    return seen


def _sandbox_processes() -> list:
    """pids of processes still running as a sandbox uid (besides the victim)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if uid >= sandbox._ROOT_UID_BASE:
            found.append(int(pid))
    return found


def _sandbox_processes_after_teardown(expected: list, deadline_s: float = 3.0) -> list:
    """The kernel tears a killed pid namespace down asynchronously: give it a moment."""
    end = time.monotonic() + deadline_s
    while True:
        found = _sandbox_processes()
        if found == expected or time.monotonic() > end:
            return found
        time.sleep(0.05)


def test_hostile_completions_fail_and_change_nothing_outside(targets):
    values, sockets, victim = targets
    problem = read_problems(limit=1)
    samples = [{"task_id": "HumanEval/0", "completion": _completion(a.format(**values))}
               for a in ATTACKS.values()]
    samples.append({"task_id": "HumanEval/0", "completion": problem[0]["canonical_solution"]})
    execute_samples(problem, samples, timeout=1.0, workers=4, show_progress=False)
    verdicts = dict(zip(list(ATTACKS) + ["canonical"], samples))
    assert len(ATTACKS) >= 40
    passed = {n: s["result"] for n, s in verdicts.items() if s["passed"] and n != "canonical"}
    assert not passed
    assert verdicts["canonical"]["passed"], verdicts["canonical"]["result"]
    for name in ("ignore SIGALRM", "disarm timer", "block SIGALRM", "unkillable sleep"):
        assert verdicts[name]["result"] == "timed out", (name, verdicts[name]["result"])
    out = values["out"]
    assert sorted(os.listdir(out)) == ["keep", "secret"]
    assert open(values["keep"]).read() == "keep" and os.stat(values["keep"]).st_mode & 0o777 == 0o666
    assert not os.path.exists("/dev/shm/codeinfer-p")
    assert _nothing_received(sockets) == []
    assert victim.poll() is None, "the victim process was killed"
    assert not [n for n, s in verdicts.items() if SECRET in s["result"]]
    for name in ("read shadow", "read passwd", "read secret", "read parent proc",
                 "list host root", "read project"):  # nothing read, so nothing to carry out
        assert verdicts[name]["result"].startswith(
            ("failed: FileNotFoundError", "failed: PermissionError")), verdicts[name]["result"]
    assert all(len(s["result"]) <= 300 for s in samples)
    if os.geteuid() == 0:  # a survivor would still be sleeping as a sandbox uid
        assert _sandbox_processes_after_teardown([victim.pid]) == [victim.pid]


def test_program_sees_only_its_own_world():
    probe = ("import os, socket\n"
             "assert os.getuid() != 0 and os.geteuid() != 0\n"
             "assert os.listdir('/sandbox') == [] and os.getcwd() == '/sandbox'\n"
             "assert not os.path.exists('/etc/passwd') and not os.path.exists('/work')\n"
             "assert sorted(p for p in os.listdir('/proc') if p.isdigit()) <= ['1', '2', '3']\n"
             "assert [n for _, n in socket.if_nameindex()] == ['lo']\n"
             "open('/sandbox/x', 'w').write('ok')\n")
    result = sandbox.run_program(probe)
    assert result.passed, result.result


def test_missing_bwrap_is_a_clear_error(monkeypatch):
    from engine.tools.humaneval import isolation
    monkeypatch.setattr(isolation.shutil, "which", lambda name: None)
    isolation.check_isolation.cache_clear()
    try:
        with pytest.raises(isolation.IsolationUnavailable, match="bubblewrap"):
            sandbox.run_program("pass")
        unsafe = sandbox.run_program("assert 1 + 1 == 2", isolation_enabled=False)
        assert unsafe.passed, unsafe.result
    finally:
        isolation.check_isolation.cache_clear()


def test_timeout_kills_the_whole_sandbox():
    start = time.perf_counter()
    result = sandbox.run_program("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                 "while True: pass", timeout=0.5)
    assert result.result == "timed out"
    assert time.perf_counter() - start < 0.5 + sandbox._KILL_GRACE_S + 2
    if os.geteuid() == 0:
        assert _sandbox_processes_after_teardown([]) == []
