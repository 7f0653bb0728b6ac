"""A real `codeinfer serve` process on 127.0.0.1 (a free port) for the server tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
# `codeinfer serve` through engine.entrypoints.cli.main, run from this tree (a shared venv's console script may be
# stale).
RUNNER = "import sys; from engine.entrypoints.cli.main import main; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`codeinfer serve --model DIR ...` in a subprocess; `url` once /health answers."""

    def __init__(self, model_dir, *args: str, startup_timeout: float = 90.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="codeinfer-serve-", suffix=".log")
        # Passive OpenMP waits: on a shared 2-core machine spinning workers can slow the first
        # steps after start-up by 100x (see the closing note of issue 6).
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
        cmd = [sys.executable, "-c", RUNNER, "serve", "--model", str(model_dir),
               "--port", str(self.port), "--dtype", "float32", "--log-level", "warning", *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not come up in {startup_timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def metric(self, name: str) -> float:
        """The value of one unlabelled or labelled sample in /metrics, e.g.
        'codeinfer_kv_blocks_used' or 'codeinfer_requests_total{outcome="aborted"}'."""
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def model_context(model_dir) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("n_positions") or config["max_position_embeddings"]


@pytest.fixture(scope="session")
def server(tiny_codegen_dir):
    proc = ServerProcess(tiny_codegen_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server):
    """An HTTP client of the shared server."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def model_name(server):
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
