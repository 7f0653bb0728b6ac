"""SamplingParams: vLLM's names, validated in the constructor (ValueError naming the field).

This is the one place the sampling rules live (the server relies on it): every value is checked to
be of the right type and in a range where the fp32 sampler cannot produce inf or NaN, so a request
that gets past here cannot make an engine step fail."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# Below this temperature sampling is greedy (as in vLLM): dividing fp32 logits by a smaller value
# overflows them to inf (1e-300 is 0 in fp32).
GREEDY_TEMPERATURE = 1e-5
# The sampler works in fp32; a float beyond this is inf there.
FLOAT32_MAX = 3.4028234663852886e38
# The penalty divides or multiplies logits: within [1/100, 100] they stay finite.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0
MAX_LOGPROBS = 20
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


@dataclass
class SamplingParams:
    """How each token of a request is chosen (vLLM's names and meanings).

    The order is transformers' (its logits warpers): penalties (repetition over the prompt and the
    output, then presence / frequency over the output), temperature, top_k (the k most likely
    tokens; ties with the k-th stay), top_p (the fewest most likely tokens whose mass in the top-k
    distribution, renormalised, reaches top_p), then min_p (drop tokens less likely than min_p
    times the most likely one). The most likely token always survives. vLLM applies min_p before
    top_k / top_p: the same tokens survive unless top_p and min_p are both set, where vLLM's top_p
    sees the distribution renormalised over min_p's survivors as well, and may keep fewer.
    logprobs (of each generated token) and prompt_logprobs (of each prompt token after the first)
    are those of the raw model distribution (no penalties, no temperature), as in vLLM: the token's
    own logprob plus the k most likely; 0 = the token's own only."""

    n: int = 1
    temperature: float = 1.0  # 0 (or below GREEDY_TEMPERATURE) = greedy
    top_p: float = 1.0
    top_k: int = 0            # 0 or -1 = off; larger than the vocabulary = off too
    min_p: float = 0.0
    max_tokens: int = 16
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    stop_strings: list[str] = field(init=False, repr=False)

    def __post_init__(self):
        for name in ("n", "max_tokens", "seed", "logprobs", "prompt_logprobs"):
            _check_int(self, name, optional=name in ("seed", "logprobs", "prompt_logprobs"))
        # top_k is not bounded: any value at or beyond the vocabulary means "all" (the sampler clamps).
        _check(self, _is_int(self.top_k), "top_k", "must be an integer")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty"):
            _check(self, _is_finite(getattr(self, name)), name, "must be a finite number")
        _check(self, isinstance(self.ignore_eos, bool), "ignore_eos", "must be a boolean")
        _check(self, self.n >= 1, "n", "must be at least 1")
        _check(self, self.temperature >= 0, "temperature", "must be >= 0")
        _check(self, 0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self, self.top_k >= 0 or self.top_k == -1, "top_k", "must be >= 0 (or -1 for off)")
        _check(self, 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        _check(self, self.max_tokens >= 1, "max_tokens", "must be at least 1")
        _check(self, MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY,
               "repetition_penalty", f"must be in [{MIN_REPETITION_PENALTY}, {MAX_REPETITION_PENALTY}]")
        _check(self, -2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
        _check(self, -2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _check(self, 0 <= getattr(self, name) <= MAX_LOGPROBS, name,
                       f"must be in [0, {MAX_LOGPROBS}]")
        self.stop_strings = self._stop_strings()
        if self.stop_token_ids is not None:
            _check(self, isinstance(self.stop_token_ids, (list, tuple)) and all(
                _is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
                "must be a list of token ids")
        if self.top_k == -1:
            self.top_k = 0

    def _stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        if isinstance(self.stop, str):
            stops = [self.stop]
        elif isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) for s in self.stop):
            stops = list(self.stop)
        else:
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        _check(self, all(stops), "stop", "must not contain empty strings")
        return stops

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


def _check(params: SamplingParams, ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{name} {why}, got {getattr(params, name)!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(params: SamplingParams, name: str, optional: bool = False) -> None:
    """An int (not a bool, not a float) that fits in int64, so no tensor or seed overflows."""
    value = getattr(params, name)
    if optional and value is None:
        return
    _check(params, _is_int(value), name, "must be an integer")
    _check(params, INT64_MIN <= value <= INT64_MAX, name, "must fit in 64 bits")


def _is_finite(value) -> bool:
    """A real number (not a bool) that is finite in fp32, where the sampler uses it."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and abs(float(value)) <= FLOAT32_MAX
    except OverflowError:  # an int too large for a float
        return False
