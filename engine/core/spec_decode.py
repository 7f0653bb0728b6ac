"""SpecDecoder: the scheduler's side of speculative decoding. Which decoding sequences draft this
step and how many tokens (the per-sequence adaptive K, the batch-size switch, the limits that
keep max_tokens and the context from being overshot), what their verification settled, and the
counters. Plain Python: the proposer (engine/worker/ngram_proposer.py) is handed in.

Adaptive K (SpeculativeConfig.adaptive): a sequence starts at num_speculative_tokens; when every
draft is accepted its K doubles (up to the configured one), otherwise it becomes the accepted
count + 1; a draft rejected outright pauses drafting for 2, 4, ... up to MAX_PAUSE steps, reset by
the next accepted token. Text that does not repeat thus costs a lookup per step and a wasted row
now and then; text that copies drafts K tokens a step."""
from __future__ import annotations

from .sequence import Sequence
from ..speculative import SpeculativeConfig

MAX_PAUSE = 16


class SpecState:
    """One sequence's speculation: its current K, consecutive misses, steps left without drafts,
    and the proposer's index of its tokens."""
    __slots__ = ("k", "misses", "pause", "index")

    def __init__(self, k: int):
        self.k, self.misses, self.pause, self.index = k, 0, 0, None


class SpecDecoder:
    def __init__(self, config: SpeculativeConfig, proposer, max_model_len: int):
        """proposer.propose(seq, index, k) -> (up to k draft tokens, index)."""
        self.config, self.proposer, self.max_model_len = config, proposer, max_model_len
        self.num_drafts = 0           # verifications: steps in which a sequence had drafts
        self.num_draft_tokens = 0     # draft tokens proposed and verified
        self.num_accepted_tokens = 0  # of those, accepted

    def drafts(self, seq: Sequence, budget: int, batch_size: int) -> list[int]:
        """The draft tokens of a sequence about to decode one token, [] for none. budget: the
        step's tokens left (its own token included); batch_size: sequences running this step."""
        if batch_size > self.config.disable_by_batch_size or not seq.num_output_tokens:
            return []  # the first token (and forks of it) comes from the prompt's last position
        state = seq.spec_state
        if state is None:
            state = seq.spec_state = SpecState(self.config.num_speculative_tokens)
        if state.pause:
            state.pause -= 1
            return []
        # A step emits at most k + 1 tokens: never past max_tokens or the context.
        limit = min(state.k, budget - 1, seq.request.params.max_tokens - seq.num_output_tokens - 1,
                    self.max_model_len - seq.num_tokens - 1)
        if limit < 1:
            return []
        draft, state.index = self.proposer.propose(seq, state.index, limit)
        return draft

    def settle(self, seq: Sequence, num_drafts: int, num_accepted: int) -> None:
        """A verification's outcome: the counters, and the sequence's next K."""
        self.num_drafts += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted_tokens += num_accepted
        state = seq.spec_state
        if not self.config.adaptive:
            return
        if num_accepted == 0:
            state.misses += 1
            state.pause = min(2 ** state.misses, MAX_PAUSE)
        else:
            state.misses = 0
        full = self.config.num_speculative_tokens
        state.k = min(full, 2 * state.k) if num_accepted == num_drafts else num_accepted + 1

    def get_stats(self) -> dict:
        """Draft tokens proposed / accepted, the acceptance rate, and the mean accepted length:
        tokens emitted per verification (accepted drafts + the one token every step gives)."""
        drafts, proposed, accepted = self.num_drafts, self.num_draft_tokens, self.num_accepted_tokens
        return {
            "spec_num_drafts": drafts,
            "spec_num_draft_tokens": proposed,
            "spec_num_accepted_tokens": accepted,
            "spec_acceptance_rate": accepted / proposed if proposed else 0.0,
            "spec_mean_accepted_length": 1 + accepted / drafts if drafts else 0.0,
        }


def empty_stats() -> dict:
    """The counters of an engine without speculative decoding (all zero)."""
    return SpecDecoder(SpeculativeConfig("ngram", 1, 1, 1, 1, False), None, 0).get_stats()
