"""SpeculativeConfig: the checked form of EngineArgs.speculative_config (vLLM's dict and names).

    {"method": "ngram", "num_speculative_tokens": K, "prompt_lookup_max": N, "prompt_lookup_min": M}

Prompt-lookup drafting: each decoding sequence proposes up to K tokens that followed the most recent
earlier occurrence of its longest suffix of N..M tokens (prompt and generated tokens). The target
model verifies them in the step's one batch; the output is exactly that of decoding without them.

Beyond vLLM's keys: "disable_by_batch_size" (no drafts in a step that decodes more sequences than
this: above it the step is bound by compute, not by reading the weights once, and extra rows cost
about what they save) and "adaptive" (per-sequence K: it shrinks while drafts are rejected and
drafting pauses after repeated misses, so text that does not repeat costs next to nothing).
Pure Python: EngineArgs checks a config without loading torch."""
from __future__ import annotations

import json
from dataclasses import dataclass

METHODS = ("ngram",)
# Where extra verification rows stop paying on the 2-core CPU (README, "Speculative decoding").
DEFAULT_DISABLE_BY_BATCH_SIZE = 4
DEFAULT_PROMPT_LOOKUP_MAX = 4
DEFAULT_PROMPT_LOOKUP_MIN = 2
MAX_SPECULATIVE_TOKENS = 32
_KEYS = ("method", "model", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min",
         "disable_by_batch_size", "adaptive")


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    prompt_lookup_max: int
    prompt_lookup_min: int
    disable_by_batch_size: int
    adaptive: bool

    @classmethod
    def from_option(cls, value) -> SpeculativeConfig | None:
        """The checked config of EngineArgs.speculative_config: None, a dict, or its JSON text.
        ValueError naming speculative_config and the key when anything is wrong."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a dict (or its JSON), got {value!r}")
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise ValueError(f"speculative_config has unknown keys {unknown}; known: {', '.join(_KEYS)}")
        if "model" in value:
            raise ValueError("speculative_config 'model' (a draft model) is not supported yet; use "
                             "{\"method\": \"ngram\", ...}")
        method = value.get("method", "ngram")
        if method not in METHODS:
            raise ValueError(f"speculative_config method must be one of {METHODS}, got {method!r}")
        k = _int(value, "num_speculative_tokens", None, 1, MAX_SPECULATIVE_TOKENS)
        # As vLLM: one bound given alone sets the other.
        if "prompt_lookup_max" in value or "prompt_lookup_min" in value:
            n_max = _int(value, "prompt_lookup_max", value.get("prompt_lookup_min"), 1, 64)
            n_min = _int(value, "prompt_lookup_min", n_max, 1, 64)
        else:
            n_max, n_min = DEFAULT_PROMPT_LOOKUP_MAX, DEFAULT_PROMPT_LOOKUP_MIN
        if n_min > n_max:
            raise ValueError(f"speculative_config prompt_lookup_min ({n_min}) is above "
                             f"prompt_lookup_max ({n_max})")
        batch = _int(value, "disable_by_batch_size", DEFAULT_DISABLE_BY_BATCH_SIZE, 1, None)
        adaptive = value.get("adaptive", True)
        if not isinstance(adaptive, bool):
            raise ValueError(f"speculative_config adaptive must be true or false, got {adaptive!r}")
        return cls(method, k, n_max, n_min, batch, adaptive)


def _int(value: dict, key: str, default, low: int, high: int | None) -> int:
    got = value.get(key, default)
    if got is None:
        raise ValueError(f"speculative_config needs {key}")
    if not isinstance(got, int) or isinstance(got, bool) or got < low or (high is not None and got > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"speculative_config {key} must be an integer {bounds}, got {got!r}")
    return got
