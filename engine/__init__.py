"""codeinfer: a paged-KV, continuously batched inference engine for small code models."""
import os
import sys

# libgomp's workers spin ~300k iterations at every barrier before they sleep. On a shared CPU a
# spinning worker holds the core its descheduled peer needs, many times per token: with one busy
# process beside it decode kept 26% of its idle tokens/s, with three 11%. 1000 spins keep 57-60%
# and 32% at an idle cost within the noise (README, Performance). libgomp reads this once, when
# torch loads it, so it applies when the engine is imported first; a user's setting wins.
if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
    os.environ["GOMP_SPINCOUNT"] = "1000"
from engine.llm import LLM
from engine.outputs import CompletionOutput, RequestOutput
from engine.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
