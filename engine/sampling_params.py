"""SamplingParams: vLLM's names, validated in the constructor (ValueError naming the field)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0            # 0 or -1 = off
    min_p: float = 0.0
    max_tokens: int = 16
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    logprobs: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    stop_strings: list[str] = field(init=False, repr=False)

    def __post_init__(self):
        def check(ok: bool, name: str, why: str):
            if not ok:
                raise ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        def number(name: str, integer: bool = False):
            value = getattr(self, name)
            kinds = (int,) if integer else (int, float)
            check(isinstance(value, kinds) and not isinstance(value, bool), name,
                  "must be an integer" if integer else "must be a number")

        for name in ("n", "top_k", "max_tokens"):
            number(name, integer=True)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty"):
            number(name)
        check(self.n >= 1, "n", "must be at least 1")
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.top_k >= 0 or self.top_k == -1, "top_k", "must be >= 0 (or -1 for off)")
        check(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        check(self.max_tokens >= 1, "max_tokens", "must be at least 1")
        check(self.repetition_penalty > 0, "repetition_penalty", "must be > 0")
        check(-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
        check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
        if self.logprobs is not None:
            number("logprobs", integer=True)
            check(0 <= self.logprobs <= 20, "logprobs", "must be in [0, 20]")
        if self.seed is not None:
            number("seed", integer=True)
        if self.stop is None:
            self.stop_strings = []
        elif isinstance(self.stop, str):
            self.stop_strings = [self.stop]
        elif isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) for s in self.stop):
            self.stop_strings = list(self.stop)
        else:
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        check(all(self.stop_strings), "stop", "must not contain empty strings")
        if self.stop_token_ids is not None:
            check(isinstance(self.stop_token_ids, (list, tuple)) and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0
                for t in self.stop_token_ids), "stop_token_ids", "must be a list of token ids")
        if self.top_k == -1:
            self.top_k = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
