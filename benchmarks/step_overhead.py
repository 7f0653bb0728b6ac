"""Host time per decode step: how much of a step is Python and torch glue rather than kernels.

Runs decode steps twice in one process per configuration: with the C++ ops as they are, then with
every C++ op (embedding, rotary + KV write, attention, packed linears, a LayerProgram's run)
replaced by a no-op and the logits by zeros, so what remains is the engine's own per-step work
(scheduling, metadata, layer code, wrappers, sampling, outputs). Compares the decoder paths: the
layers as one C++ call (engine/layers/program.py, the default) and one call per op, in alternating
rounds. Reports the median step time of each (and its range over the rounds) and the glue's share.

    python -m benchmarks.step_overhead [--model DIR] [--requests 1,8,32] [--context 128] [--paths program,layers] [--repeat 3]

Numbers, not a test: run it on a quiet machine (`cat /proc/loadavg`), and compare revisions in
alternating runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine import LLM, SamplingParams
from kernels import cpu, cpu_linear, cpu_program

_OPS = ("gated_embedding", "rotary_store_kv", "paged_attention", "int8_linear", "bf16_linear",
        "int4_linear")


class _NoOps:
    """kernels._cpu with the ops that do the arithmetic replaced by no-ops (their outputs stay as
    torch.empty left them)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return (lambda *args: None) if name in _OPS else getattr(self._real, name)


class _NoOpRun:
    """A LayerProgram's C++ program whose run does nothing (its Python checks still run)."""

    def run(self, *args):
        return None


def _stub_program_runs() -> None:
    """Make LayerProgram calls run their Python side only (measure restores the real __call__)."""
    real_call = cpu_program.LayerProgram.__call__

    def call(self, *args):
        real, self._program = self._program, _NoOpRun()
        try:
            return real_call(self, *args)
        finally:
            self._program = real

    cpu_program.LayerProgram.__call__ = call


def _median_step_ms(engine, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(llm: LLM, requests: int, context: int, steps: int) -> tuple[float, float]:
    """(real ms/step, glue ms/step) for `requests` sequences decoding after `context` tokens."""
    engine = llm.engine
    model = engine.runner.model
    vocab = model.config.vocab_size
    results = []
    for no_ops in (False, True):
        real_ops, real_logits, real_call = cpu._cpu, model.compute_logits, cpu_program.LayerProgram.__call__
        if no_ops:
            cpu._cpu = cpu_linear._cpu = _NoOps(real_ops)
            _stub_program_runs()
            # zeros, not whatever torch.empty held: reductions over garbage can be very slow
            model.compute_logits = lambda hidden: torch.zeros(hidden.shape[0], vocab)
        try:
            gen = torch.Generator().manual_seed(requests)
            for r in range(requests):
                ids = torch.randint(100, min(vocab, 4000), (context,), generator=gen).tolist()
                engine.add_request(f"{no_ops}-{r}", {"prompt_token_ids": ids},
                                   SamplingParams(max_tokens=steps + 8, temperature=0, ignore_eos=True))
            for _ in range(4):  # prefill and warm-up
                engine.step()
            results.append(_median_step_ms(engine, steps))
            while engine.has_unfinished_requests():
                engine.step()
        finally:
            cpu._cpu = cpu_linear._cpu = real_ops
            cpu_program.LayerProgram.__call__ = real_call
            model.compute_logits = real_logits
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-cache-dtype", default="int8")
    parser.add_argument("--requests", default="1,8,32", help="comma-separated concurrent sequences")
    parser.add_argument("--context", type=int, default=128, help="prompt tokens before decoding")
    parser.add_argument("--steps", type=int, default=40, help="decode steps timed per configuration")
    parser.add_argument("--paths", default="program,layers",
                        help="decoder paths compared: program (the layers as one C++ call, the default), "
                             "layers (one call per op)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, each timing every path once")
    args = parser.parse_args()
    llm = LLM(model=args.model, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype, enable_prefix_caching=False)
    program = llm.engine.runner.model.program
    paths = args.paths.split(",")
    print("| requests | decoder path | step ms (range) | glue ms (no-op kernels) | glue share |")
    print("|---:|---|---:|---:|---:|")
    for requests in (int(r) for r in args.requests.split(",")):
        runs: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
        for _ in range(args.repeat):  # rounds alternate the paths: the machine drifts between rounds
            for path in paths:
                program.enabled = path == "program"
                runs[path].append(measure(llm, requests, args.context, args.steps))
        for path in paths:
            real = sorted(r for r, _ in runs[path])
            glue = statistics.median(g for _, g in runs[path])
            step = statistics.median(real)
            print(f"| {requests} | {path} | {step:.2f} ({real[0]:.2f}-{real[-1]:.2f}) | {glue:.2f} | "
                  f"{100 * glue / step:.0f}% |")
    program.enabled = True

if __name__ == "__main__":
    main()
