"""Request outputs, vLLM-shaped."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None       # None while running, then "stop" or "length"
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    error: str | None = None    # set (on a finished output) when the request failed in a step
    # SamplingParams.prompt_logprobs: [None, {token id: logprob}, ...], one per prompt token; it
    # grows while the prompt is prefilled in chunks and is whole once a token is generated.
    prompt_logprobs: list[dict[int, float] | None] | None = None
