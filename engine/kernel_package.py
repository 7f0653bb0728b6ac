"""The kernels package beside the engine, by the name it has where the engine runs.

From a checkout the two sit side by side as top-level `engine` and `kernels`; installed they are
`codeinfer.engine` and `codeinfer.kernels` (pyproject.toml, wheel.packages), so that the generic
names never collide with another distribution's. Inside each package imports are relative; the
engine reaches the kernels only through this module (`kernels` never imports `engine`)."""
from __future__ import annotations

import importlib
from types import ModuleType

# "kernels" in a checkout, "codeinfer.kernels" when installed.
PACKAGE = __name__.rpartition("engine.")[0] + "kernels"


def load(name: str) -> ModuleType:
    """kernels.<name>: "reference" (pure torch), "cpu" (the C++ ops) or "triton".

    ImportError propagates as a plain import's would (the C++ extension not built, no triton)."""
    return importlib.import_module(f"{PACKAGE}.{name}")


reference = load("reference")
host_memory = load("host_memory")
