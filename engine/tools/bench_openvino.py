"""OpenVINO, a peer of `codeinfer bench --compare openvino` (the bench extra: openvino,
openvino-genai, optimum-intel). The checkpoint is exported once by optimum-intel with int8 weights
(`--weight-format int8`: per-channel asymmetric int8, as NNCF compresses it) into a cache folder keyed
by the checkpoint's path and mtime, then timed through openvino_genai: LLMPipeline for one request,
ContinuousBatchingPipeline for several, on the same token ids, greedy, exactly max_tokens new
tokens (ignore_eos, min = max new tokens).

The CPU plugin's INFERENCE_PRECISION_HINT is chosen, not left implicit: "auto" takes bf16 when the
CPU lists BF16 among its OPTIMIZATION_CAPABILITIES, else f32, and the result says which one ran.

TTFT is OpenVINO's own (the perf metrics of the timed generate: the slowest request's first token),
read in the timed run as codeinfer's is: timing a separate one-token run instead leaves ITL as the
small difference of two long, noisy prefills after a long prompt."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import BENCH_EXTRA
from .bench_bytes import Storage, sequence_bytes
from .bench_peers import PromptSets, time_runs

PIP_COMMAND = BENCH_EXTRA
PRECISIONS = ("auto", "f32", "bf16")
# Bytes per element of the CPU plugin's KV-cache precisions, and the extra per (token, head) row
# (u8: an f32 scale and an f32 zero point per row of K or V).
_KV_BYTES = {"u8": (1, 8), "f16": (2, 0), "bf16": (2, 0), "f32": (4, 0)}


class ExportFailed(RuntimeError):
    """optimum-intel could not export the checkpoint (the message is one line)."""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codeinfer"


def export_dir(model: str) -> Path:
    """Where the export of this checkpoint lives: keyed by its resolved path and newest file mtime,
    so rewriting the checkpoint makes a new export."""
    path = Path(model).resolve()
    mtime = max((f.stat().st_mtime_ns for f in path.iterdir() if f.is_file()), default=0)
    digest = hashlib.sha1(f"{path}\0{mtime}".encode()).hexdigest()[:12]
    return cache_root() / "openvino" / f"{path.name}-{digest}-int8"


def check_installed(model: str, export_python: str = sys.executable) -> None:
    """ValueError naming the pip command when openvino / openvino_genai are missing here, or, when
    the export is not cached yet, optimum-intel in the Python that exports."""
    missing = [m for m in ("openvino", "openvino_genai") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--compare openvino needs the bench extra ({', '.join(missing)} not installed): "
                         f"{PIP_COMMAND}")
    if (export_dir(model) / "openvino_model.xml").is_file():
        return
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('optimum.intel') is None)"
    try:
        found = subprocess.run([export_python, "-c", probe], capture_output=True).returncode == 0
    except OSError as e:
        raise ValueError(f"--openvino-export-python {export_python!r} cannot run: {e}") from None
    if not found:
        raise ValueError(f"--compare openvino exports with optimum-intel, which {export_python} cannot "
                         f"import: {PIP_COMMAND}")


def export(model: str, export_python: str = sys.executable) -> Path:
    """The OpenVINO export of model (made now unless cached). It is written to a temporary folder
    renamed when complete, so an interrupted export never passes for a cached one."""
    out = export_dir(model)
    if (out / "openvino_model.xml").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    cmd = [export_python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model",
           str(Path(model).resolve()), "--task", "text-generation-with-past", "--weight-format", "int8",
           str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / "openvino_model.xml").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["no error output"]
        hint = ""
        if "torchvision" in proc.stderr:
            hint = (" (PyPI's torchvision, which optimum-intel pulls in, is built for CUDA torch and fails "
                    "to import next to the CPU build, taking transformers with it: pip uninstall torchvision)")
        elif "ImportError" in lines[-1] or "ModuleNotFoundError" in lines[-1]:
            hint = (" (optimum-intel 2.2 needs transformers < 5.6: export from an environment with "
                    f"{PIP_COMMAND!r} through --openvino-export-python)")
        raise ExportFailed(f"optimum-intel export failed: {lines[-1].strip()}{hint}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_precision(requested: str, capabilities: list[str]) -> str:
    """The INFERENCE_PRECISION_HINT to run with: bf16 where the CPU can (auto), else f32."""
    if requested not in PRECISIONS:
        raise ValueError(f"openvino precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "bf16" and "BF16" not in capabilities:
        raise ValueError(f"openvino precision bf16: this CPU lists {', '.join(capabilities)}, no BF16 "
                         "(the plugin would quietly run f32)")
    if requested == "auto":
        return "bf16" if "BF16" in capabilities else "f32"
    return requested


def _ttft_s(results) -> float:
    """The latest first token of a generate's results, from their perf metrics (ms -> s)."""
    return max(r.perf_metrics.get_ttft().mean for r in results) / 1e3


def _pipeline(spec: dict, num_requests: int, properties: dict, kv_storage: Storage):
    """(generate(batch, num_tokens) -> (generated id lists, TTFT in s), pipeline kind)."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    def config(num_tokens):
        return ov_genai.GenerationConfig(max_new_tokens=num_tokens, min_new_tokens=num_tokens,
                                         ignore_eos=True, do_sample=False)

    if num_requests == 1:
        pipe = ov_genai.LLMPipeline(spec["ov_dir"], "CPU", **properties)

        def generate_one(batch, n):
            result = pipe.generate(ov.Tensor(np.array(batch, dtype=np.int64)), config(n))
            return result.tokens, _ttft_s([result])
        return generate_one, "LLMPipeline"
    from ..config import load_config
    longest = spec["prompt_len"] + spec["max_tokens"]
    cache_bytes = num_requests * sequence_bytes(load_config(spec["model"]), kv_storage, longest)
    sched = ov_genai.SchedulerConfig()
    sched.max_num_seqs = num_requests
    sched.max_num_batched_tokens = max(2048, longest)
    sched.cache_size = max(1, math.ceil(cache_bytes / 1e9))  # GB, the workload's own cache
    sched.enable_prefix_caching = False
    pipe = ov_genai.ContinuousBatchingPipeline(spec["ov_dir"], sched, "CPU", properties)

    def generate(batch, n):
        inputs = [ov.Tensor(np.array([p], dtype=np.int64)) for p in batch]
        results = pipe.generate(inputs, [config(n)] * len(batch))
        return [r.m_generation_ids[0] for r in results], _ttft_s(results)
    return generate, "ContinuousBatchingPipeline"


def run_openvino(spec: dict, prompts: PromptSets) -> dict:
    """openvino_genai on the CPU with int8 weights; see the module docstring."""
    import openvino as ov

    core = ov.Core()
    capabilities = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    precision = resolve_precision(spec.get("ov_precision", "auto"), capabilities)
    kv_name = core.get_property("CPU", "KV_CACHE_PRECISION").get_type_name()
    kv, kv_per_row = _KV_BYTES.get(kv_name, (4, 0))
    act = 2 if precision == "bf16" else 4
    storage = Storage(weight=1, per_channel=3, act=act, kv=kv, kv_per_row=kv_per_row)  # f16 scale + u8 zp
    properties = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": len(os.sched_getaffinity(0))}
    generate, kind = _pipeline(spec, len(prompts["full"]), properties, storage)

    ttfts = []

    def run(batch, num_tokens):
        ids, ttft = generate(batch, num_tokens)
        assert all(len(row) == num_tokens for row in ids)
        ttfts.append(ttft)

    result = time_runs(run, prompts, spec["max_tokens"], spec["background_load"])
    if 0 < ttfts[2] < result["full_s"]:  # [warm-up, prefill-only, timed run]; else the 1-token run's
        result["ttft_s"] = ttfts[2]
        result["ttft_method"] = "perf metrics"
    result["storage"] = dataclasses.asdict(storage)
    result["dtype"] = f"int8 ({precision}, {kv_name} KV)"
    requested = spec.get("ov_precision", "auto")
    result["notes"] = (f"{kind}, INFERENCE_PRECISION_HINT {precision} (requested {requested}; "
                       f"CPU capabilities {', '.join(capabilities)}), KV cache {kv_name}")
    return result
