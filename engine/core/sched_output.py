"""SchedulerOutput: what the scheduler hands the model runner for one step (and gets back, with the
sampled tokens, in update_from_output)."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.core.sequence import Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int       # tokens computed this step: seq.token_ids[c : c + num_new_tokens]
    sample: bool              # this chunk reaches the end of the known tokens: sample the next one
    forks: list[Sequence] = field(default_factory=list)  # samples forked from seq this step


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    block_copies: list[tuple[int, int]]  # (src, dst) KV blocks to copy before the forward pass
    num_batched_tokens: int
    num_preempted: int = 0

    @property
    def empty(self) -> bool:
        return not self.scheduled
