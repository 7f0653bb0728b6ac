"""Shared set-up of the kernel tests: Triton runs in its interpreter on CPU tensors, every test gets
its own reproducible seed, and `backend` hands a test the ops module it checks."""
from __future__ import annotations

import importlib
import os
import sys
import zlib

# Triton decides interpreter vs. compiler when a kernel is decorated, i.e. when kernels.triton is
# imported, so the variable must be set before that (conftest files load before any test module).
# The tests feed CPU tensors, so they need the interpreter; an explicit TRITON_INTERPRET=0 skips them.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def _triton_ops():
    """kernels.triton in interpreter mode, reloaded if something imported it before
    TRITON_INTERPRET was set (its kernels were then decorated for the compiler)."""
    ops = importlib.import_module("kernels.triton")
    if os.environ["TRITON_INTERPRET"] == "1" and not ops.INTERPRETED:
        ops = importlib.reload(sys.modules["kernels.triton"])
    if not ops.INTERPRETED:
        pytest.skip("the Triton tests use CPU tensors and need TRITON_INTERPRET=1")
    return ops


@pytest.fixture(autouse=True)
def _seed(request):
    """A fresh but reproducible random stream per test (seeded from the test id)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def cpu_ops():
    return importlib.import_module("kernels.cpu")


@pytest.fixture
def triton_ops():
    try:
        return _triton_ops()
    except ModuleNotFoundError as exc:  # triton not installed (or kernels.triton not there yet)
        if exc.name not in ("triton", "kernels.triton"):
            raise
        pytest.skip(f"needs {exc.name}")


@pytest.fixture(params=["cpu", "triton"])
def backend(request):
    """(name, module) of the implementation under test; both expose the reference's signatures."""
    return request.param, request.getfixturevalue(f"{request.param}_ops")
