"""`codeinfer serve --num-replicas 2` (a local Ray instance on 127.0.0.1, the bundled model, one
CPU per replica) started once for the replica tests, and a single-process server to compare with.

The server runs in its own process group, so whatever Ray process outlives it is found (and
ended) at teardown, and reported as a leak.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from tests.entrypoints.server.conftest import REPO, RUNNER, ServerProcess, free_port

# Ray's start, two model loads and Serve's deploy take ~1.5 min on a busy 2-core machine.
STARTUP_TIMEOUT_S = 300.0
# Both servers: a cache small enough that a request can be refused for it (4 full contexts).
ENGINE_ARGS = ("--num-kv-blocks", "128")
_SAMPLE = re.compile(r'^(\w+)\{(.*)\} (\S+)$')


class ReplicaServer:
    def __init__(self, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="codeinfer-replicas-", suffix=".log")
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
        cmd = [sys.executable, "-c", RUNNER, "serve", "--port", str(self.port), "--dtype",
               "float32", "--log-level", "warning", "--disable-log-requests", *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, num_replicas: int, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Until /health answers and /metrics shows `num_replicas` live replicas."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if len(self.replicas()) == num_replicas:
                    return
            except (httpx.TransportError, httpx.HTTPStatusError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{num_replicas} replicas not up in {timeout} s:\n"
                                   f"{self.output()}")
            time.sleep(0.5)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-20000:]

    def samples(self, name: str) -> dict[str, float]:
        """{replica id: value} of a per-replica metric."""
        response = httpx.get(self.url + "/metrics", timeout=10)
        response.raise_for_status()
        found = {}
        for line in response.text.splitlines():
            match = _SAMPLE.match(line)
            if match and match.group(1) == name:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
                found[labels["replica"]] = float(match.group(3))
        return found

    def replicas(self) -> dict[str, int]:
        """{replica id: pid} of the live replicas."""
        response = httpx.get(self.url + "/metrics", timeout=10)
        response.raise_for_status()
        return {replica: int(pid) for pid, replica in re.findall(
            r'^codeinfer_replica_info\{pid="(\d+)",replica="([^"]+)"\}', response.text, re.M)}

    def group(self) -> list[str]:
        """'pid command' of every process in the server's process group (Ray's included)."""
        return _group_members(self.proc.pid)

    def listening(self) -> set[str]:
        """The addresses the server's process group listens on (TCP)."""
        import psutil

        found = set()
        for member in self.group():
            try:
                connections = psutil.Process(int(member.split()[0])).net_connections("tcp")
            except psutil.Error:
                continue
            found |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
        return found

    def stop(self) -> list[str]:
        """SIGTERM and wait; returns what was left of its process group (then killed)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        leftovers = _group_members(self.proc.pid)
        if leftovers:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        return leftovers


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-e", "-ww", "-o", "pgid=,pid=,args="], capture_output=True,
                         text=True).stdout
    rows = (line.split(None, 2) for line in out.splitlines())
    return [" ".join(row[1:]) for row in rows if len(row) == 3 and row[0] == str(pgid)]


@pytest.fixture(scope="session")
def replicas():
    from engine.core.llm_engine import default_model_dir

    server = ReplicaServer("--model", str(default_model_dir()), *ENGINE_ARGS, "--num-replicas",
                           "2", "--threads-per-replica", "1")
    try:
        server.wait_ready(2)
    except BaseException:
        server.stop()
        raise
    yield server
    leftovers = server.stop()
    assert not leftovers, f"Ray processes outlived `codeinfer serve`: {leftovers}"


@pytest.fixture(scope="session")
def single():
    """The single-process server on the same (bundled) model, to compare answers with."""
    from engine.core.llm_engine import default_model_dir

    proc = ServerProcess(default_model_dir(), *ENGINE_ARGS)
    yield proc
    proc.stop()
