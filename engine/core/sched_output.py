"""The hand-offs of one step: SchedulerOutput (scheduler -> model runner) and ModelRunnerOutput
(model runner -> Scheduler.update_from_output). Plain data, no torch."""
from __future__ import annotations

from dataclasses import dataclass, field

from .sequence import Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int       # tokens computed this step: seq.token_ids[c : c + num_new_tokens]
    sample: bool              # this chunk reaches the end of the known tokens: sample the next one
    forks: list[Sequence] = field(default_factory=list)  # samples forked from seq this step
    # Speculative decoding: tokens proposed after seq's known ones, verified this step. They are
    # the last len(draft_token_ids) of the num_new_tokens inputs; the rejected ones are rolled back.
    draft_token_ids: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    block_copies: list[tuple[int, int]]  # (src, dst) KV blocks to copy before the forward pass

    @property
    def empty(self) -> bool:
        return not self.scheduled

    @property
    def num_tokens(self) -> int:
        """Rows of the step's forward pass."""
        return sum(item.num_new_tokens for item in self.scheduled)


@dataclass
class ModelRunnerOutput:
    """What one step produced: the sequences that sampled, their samples in the same order (a
    sequence that verified drafts appears once per token it emitted, in order), the
    requests that made the step fail (request id -> error; they get no samples), and the prompt
    logprobs the step's prefill chunks computed (request id -> entries, continuing its
    Request.prompt_logprobs)."""
    seqs: list[Sequence]
    sampled: "SampleResult"  # engine.worker.sampler.SampleResult: token_ids, logprobs, top_logprobs
    failed: dict[str, Exception] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[dict[int, float]]] = field(default_factory=dict)
