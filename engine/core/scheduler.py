"""Continuous-batching scheduler: one token budget per step shared by decode rows and (chunked)
prefills, first come first served, preemption by recompute when KV blocks run out."""
from __future__ import annotations

from collections import deque

from engine.core.block_manager import BlockManager
from engine.core.sched_output import ScheduledSeq, SchedulerOutput
from engine.core.sequence import Request, Sequence, SequenceStatus


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request.seqs[0])

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.bm.free_seq(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _fork_pending(self, seq: Sequence) -> list[Sequence]:
        if seq.index != 0 or seq.num_output_tokens:
            return []
        return [s for s in seq.request.seqs if s.status == SequenceStatus.FORK_PENDING]

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        copies: list[tuple[int, int]] = []
        preempted = 0
        # 1) Running sequences, oldest first; the newest are preempted when blocks run out.
        kept: list[Sequence] = []
        queue = list(self.running)
        while queue and budget > 0:
            seq = queue.pop(0)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while self.bm.slots_needed(seq, num_new) > self.bm.num_free_blocks and queue:
                self._preempt(queue.pop())
                preempted += 1
            if self.bm.slots_needed(seq, num_new) > self.bm.num_free_blocks:
                self._preempt(seq)
                preempted += 1
                continue
            copies += self.bm.append_slots(seq, num_new)
            scheduled.append(ScheduledSeq(seq, num_new, seq.num_computed_tokens + num_new == seq.num_tokens))
            kept.append(seq)
            budget -= num_new
        kept += queue  # not scheduled this step (budget spent) but still running
        self.running = kept
        # 2) Waiting sequences, in arrival order, while budget, blocks and seq slots last.
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table:
                self.bm.allocate_cached_prefix(seq)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            forks = []
            if seq.num_computed_tokens + num_new == seq.num_tokens:
                forks = self._fork_pending(seq)
            # Keep one block of head room per forked sample for its copy-on-write.
            if self.bm.slots_needed(seq, num_new) + len(forks) > self.bm.num_free_blocks:
                # Give back the cached prefix it took: a waiting sequence holds no blocks.
                self.bm.free_seq(seq)
                break
            self.waiting.popleft()
            copies += self.bm.append_slots(seq, num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, num_new, True if forks else
                                          seq.num_computed_tokens + num_new == seq.num_tokens, forks))
            budget -= num_new
        for item in scheduled:  # running decodes may also complete a prompt with samples to fork
            if not item.forks and item.sample:
                item.forks = self._fork_pending(item.seq)
            for child in item.forks:
                self.bm.fork(item.seq, child)
                child.status = SequenceStatus.RUNNING
                self.running.append(child)
        return SchedulerOutput(scheduled, copies, self.max_num_batched_tokens - budget, preempted)

    def finish(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED
        self.bm.free_seq(seq)
        if seq in self.running:
            self.running.remove(seq)

    def abort(self, request: Request) -> None:
        for seq in request.seqs:
            if seq.status == SequenceStatus.WAITING and seq in self.waiting:
                self.waiting.remove(seq)
            if not seq.finished:
                self.finish(seq)
            seq.finish_reason = seq.finish_reason or "abort"
