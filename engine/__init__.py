"""codeinfer: a paged-KV, continuously batched inference engine for small code models.

The public names load on first use, so `import engine.diff` (pure text) does not load torch."""
import importlib
import os
import sys

# libgomp's workers spin a long while at every barrier before they sleep. On a shared CPU a
# spinning worker holds the core its descheduled peer needs, many times per token; a short spin
# keeps most of the idle speed beside busy processes at no measurable idle cost (README,
# Performance). libgomp reads this once, when torch loads it, so it applies when the engine is
# imported first; a user's setting wins.
if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
    os.environ["GOMP_SPINCOUNT"] = "1000"

_EXPORTS = {
    "LLM": ".entrypoints.llm",
    "EngineArgs": ".engine_args",
    "SamplingParams": ".core.sampling_params",
    "RequestOutput": ".core.outputs",
    "CompletionOutput": ".core.outputs",
    "__version__": ".version",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
