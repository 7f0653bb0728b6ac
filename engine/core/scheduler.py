"""Continuous-batching scheduler: one token budget per step shared by decode rows and (chunked)
prefills, first come first served, preemption by recompute when KV blocks run out."""
from __future__ import annotations

from collections import Counter, deque
from typing import Callable

from .block_manager import BlockManager
from .sched_output import ModelRunnerOutput, ScheduledSeq, SchedulerOutput
from .sequence import Request, Sequence, SequenceStatus
from .spec_decode import SpecDecoder, empty_stats


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 generated_modality: int = 0, spec: SpecDecoder | None = None):
        """generated_modality: the modality of sampled tokens (1 = code, CodeCLM's vocabulary).
        spec: speculative decoding (decoding sequences verify draft tokens), None for none."""
        self.bm = block_manager
        self.spec = spec
        self.generated_modality = generated_modality
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def check_fits_cache(self, num_tokens: int, num_samples: int) -> None:
        """ValueError when a request of num_tokens (prompt + max_tokens) and num_samples samples
        could never be scheduled: it needs more KV blocks than the cache has."""
        need = self.bm.blocks_needed(num_tokens) + num_samples - 1
        if need > self.bm.num_blocks:
            raise ValueError(f"prompt + max_tokens needs {need} KV blocks, the cache has "
                             f"{self.bm.num_blocks} (raise num_kv_blocks)")

    def add(self, request: Request) -> None:
        self.waiting.append(request.seqs[0])

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
        preempted = 0  # once a running sequence is preempted, no waiting one starts this step
        # 1) Running sequences, oldest first; the newest are preempted when blocks run out.
        kept: list[Sequence] = []
        queue = list(self.running)
        batch_size = len(queue)
        while queue and budget > 0:
            seq = queue.pop(0)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            drafts = self._drafts(seq, num_new, budget, batch_size)
            num_new += len(drafts)
            while self.bm.slots_needed(seq, num_new) > self.bm.num_free_blocks and queue:
                self._preempt(queue.pop())
                preempted += 1
            if self.bm.slots_needed(seq, num_new) > self.bm.num_free_blocks:
                self._preempt(seq)
                preempted += 1
                continue
            copies += self.bm.append_slots(seq, num_new)
            scheduled.append(ScheduledSeq(seq, num_new, seq.num_computed_tokens + num_new
                                          == seq.num_tokens + len(drafts), draft_token_ids=drafts))
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
        return SchedulerOutput(scheduled, copies)

    def _drafts(self, seq: Sequence, num_new: int, budget: int, batch_size: int) -> list[int]:
        """Draft tokens for a sequence decoding its one new token; never a reason to preempt:
        none when their blocks are not free."""
        if self.spec is None or num_new != 1 or seq.num_computed_tokens + 1 != seq.num_tokens:
            return []
        drafts = self.spec.drafts(seq, budget, batch_size)
        if drafts and self.bm.slots_needed(seq, 1 + len(drafts)) > self.bm.num_free_blocks:
            return []
        return drafts

    def update_from_output(self, sched: SchedulerOutput, output: ModelRunnerOutput,
                           check_stop: Callable[[Sequence, int], str | None]) -> list[Request]:
        """Settle one step: advance each scheduled sequence's computed tokens (forked samples
        follow their parent; of its drafts the accepted ones, the rejected rolled back), append
        each sampled token, register its newly full blocks for prefix reuse, and finish the
        sequences that check_stop(seq, token) ("stop" | "length" | None) ends. A request in output.failed does not advance; one whose check_stop raises is added
        to it. Returns the requests that advanced, in schedule order."""
        failed = output.failed
        emitted = Counter(seq.seq_id for seq in output.seqs)
        advanced: dict[str, Request] = {}
        for item in sched.scheduled:
            if item.seq.request.request_id in failed:
                continue  # the engine aborts it: its state must not advance
            self._advance(item, emitted[item.seq.seq_id])
            advanced[item.seq.request.request_id] = item.seq.request
        stopped: list[Sequence] = []
        sampled = output.sampled
        for row, seq in enumerate(output.seqs):
            request_id = seq.request.request_id
            # Another sample of the request failed before this one, or the sequence stopped at
            # an earlier token of its accepted drafts.
            if request_id in failed or seq.finish_reason is not None:
                continue
            token = sampled.token_ids[row]
            seq.append_token(token, self.generated_modality, sampled.logprobs[row],
                             sampled.top_logprobs[row])
            try:
                reason = check_stop(seq, token)
            except Exception as error:  # e.g. its detokenizer: costs this request only
                failed[request_id] = error
                continue
            if reason is not None:
                seq.finish_reason = reason
                stopped.append(seq)
        # After the tokens are appended: accepted drafts are computed before they are appended.
        for item in sched.scheduled:
            if item.seq.request.request_id in advanced:
                self.bm.register_full_blocks(item.seq)
        for seq in stopped:
            self.finish(seq)
        return list(advanced.values())

    def _advance(self, item: ScheduledSeq, num_emitted: int) -> None:
        """Count a scheduled chunk as computed (forked samples follow their parent); of its drafts
        only the accepted ones (a sequence emits them and one token more), the blocks only the
        rejected ones took given back."""
        seq, rejected = item.seq, 0
        if item.draft_token_ids:
            accepted = num_emitted - 1
            rejected = len(item.draft_token_ids) - accepted
            self.spec.settle(seq, len(item.draft_token_ids), accepted)
        seq.num_computed_tokens += item.num_new_tokens - rejected
        for child in item.forks:
            child.num_computed_tokens = seq.num_computed_tokens
        if rejected:
            self.bm.truncate(seq)

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

    def get_stats(self) -> dict:
        bm = self.bm
        return {
            "num_running": len(self.running),
            "num_waiting": len(self.waiting),
            "num_total_blocks": bm.num_blocks,
            "num_free_blocks": bm.num_free_blocks,
            "num_used_blocks": bm.num_blocks - bm.num_free_blocks,
            "prefix_cache_queries": bm.prefix_queries,
            "prefix_cache_hits": bm.prefix_hits,
            "num_preemptions": self.num_preemptions,
            **(self.spec.get_stats() if self.spec else empty_stats()),
        }
