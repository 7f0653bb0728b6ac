"""Requests and their sequences (one per sample: n > 1 forks sequences that share the prompt)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FORK_PENDING = "fork_pending"  # sample i > 0 of a request, waiting for the prompt of sample 0
    FINISHED = "finished"


class Sequence:
    """Token ids (prompt + generated), their modality, and how many are in the KV cache."""

    def __init__(self, seq_id: int, request: "Request", index: int):
        self.seq_id, self.request, self.index = seq_id, request, index
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.modality: list[int] = list(request.prompt_modality)
        self.num_prompt_tokens = len(self.token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # hash chain of the full blocks (a cache of hashes)
        self.num_registered_blocks = 0       # leading blocks whose hash the block manager knows
        self.status = SequenceStatus.WAITING if index == 0 else SequenceStatus.FORK_PENDING
        self.finish_reason: str | None = None
        self.text = ""
        self.logprobs: list[dict[int, float]] | None = [] if request.params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.generator = None    # torch.Generator, set by the engine
        self.detokenizer = None  # IncrementalDetokenizer, set by the engine
        self.spec_state = None   # engine.core.spec_decode.SpecState, with speculative decoding

    def append_token(self, token: int, modality: int, logprob: float,
                     top_logprobs: dict[int, float] | None) -> None:
        self.token_ids.append(token)
        self.modality.append(modality)
        self.cumulative_logprob += logprob
        if self.logprobs is not None:
            self.logprobs.append(top_logprobs)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_modality: list[int]
    params: SamplingParams
    arrival_index: int
    seqs: list[Sequence] = field(default_factory=list)
    # SamplingParams.prompt_logprobs: None for the first prompt token, then one {token id:
    # logprob} per prompt token as the prefill reaches it (vLLM's shape); None when not asked.
    prompt_logprobs: list[dict[int, float] | None] | None = field(init=False, default=None)

    def __post_init__(self):
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None]

    @property
    def prompt_logprobs_from(self) -> int | None:
        """The first prompt position whose logits prompt logprobs still need (position p gives the
        logprob of prompt token p + 1), or None: not asked, or all known. Those positions must be
        computed, not taken from the prefix cache."""
        if self.prompt_logprobs is None or len(self.prompt_logprobs) >= len(self.prompt_token_ids):
            return None
        return len(self.prompt_logprobs) - 1

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)
