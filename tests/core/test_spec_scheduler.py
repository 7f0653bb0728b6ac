"""Speculative decoding in the scheduler, without a model: which sequences draft and how many
tokens, what a verification settles (accepted drafts computed, rejected ones rolled back, blocks
given back, no hash over an unaccepted token), the adaptive K and the counters."""
import subprocess
import sys

from engine.core.block_manager import BlockManager
from engine.core.sched_output import ModelRunnerOutput
from engine.core.scheduler import Scheduler
from engine.core.spec_decode import SpecDecoder
from engine.speculative import SpeculativeConfig
from engine.worker.ngram_proposer import NgramProposer
from tests.core.test_scheduler import BLOCK, make_request, sampled


class FixedProposer:
    """Proposes the next `k` tokens of a scripted continuation."""

    def __init__(self, draft: list[int]):
        self.draft = draft

    def propose(self, seq, index, k):
        return self.draft[:k], index


def spec_scheduler(num_blocks=32, k=4, budget=64, draft=(50, 51, 52, 53, 54, 55), batch=8,
                   adaptive=False, max_model_len=10_000):
    config = SpeculativeConfig("ngram", k, 3, 1, batch, adaptive)
    spec = SpecDecoder(config, FixedProposer(list(draft)), max_model_len)
    bm = BlockManager(num_blocks, BLOCK)
    return Scheduler(bm, 8, budget, spec=spec), bm


def run_step(scheduler, tokens_of, check_stop=lambda seq, token: None):
    """Schedule, then settle with tokens_of(item) -> the tokens that sequence emits."""
    sched = scheduler.schedule()
    seqs, tokens = [], []
    for item in sched.scheduled:
        if item.sample:
            emitted = tokens_of(item)
            seqs += [item.seq] * len(emitted)
            tokens += emitted
    scheduler.update_from_output(sched, ModelRunnerOutput(seqs, sampled(tokens)), check_stop)
    return sched


def prefill_and_first_token(scheduler, num_tokens=9, max_tokens=20):
    request = make_request(num_tokens, max_tokens=max_tokens)
    scheduler.add(request)
    sched = run_step(scheduler, lambda item: [7])
    assert sched.scheduled[0].draft_token_ids == []  # the first token never drafts
    return request.seqs[0]


def test_a_fully_rejected_draft_leaves_exactly_the_kv_of_plain_decoding():
    scheduler, bm = spec_scheduler()
    seq = prefill_and_first_token(scheduler, num_tokens=7)   # 8 tokens, 7 computed: 2 blocks
    plain, plain_bm = spec_scheduler()
    plain.spec = None
    plain_seq = prefill_and_first_token(plain, num_tokens=7)
    sched = run_step(scheduler, lambda item: [99])             # draft 50.. rejected at once
    assert sched.scheduled[0].draft_token_ids == [50, 51, 52, 53]
    assert sched.scheduled[0].num_new_tokens == 5
    run_step(plain, lambda item: [99])
    assert seq.num_computed_tokens == plain_seq.num_computed_tokens == 8
    assert seq.token_ids == plain_seq.token_ids
    assert len(seq.block_table) == len(plain_seq.block_table) == 2
    assert bm.num_free_blocks == plain_bm.num_free_blocks
    assert seq.num_registered_blocks == plain_seq.num_registered_blocks == 2


def test_accepted_drafts_are_computed_and_hashed_only_once_appended():
    scheduler, bm = spec_scheduler()
    seq = prefill_and_first_token(scheduler, num_tokens=7)
    run_step(scheduler, lambda item: [50, 51, 98])  # two accepted, then a correction
    assert seq.output_token_ids == [7, 50, 51, 98]
    assert seq.num_computed_tokens == 10 and seq.num_tokens == 11
    assert len(seq.block_table) == 3                 # blocks for 10 computed tokens, no more
    assert seq.num_registered_blocks == 2
    assert bm.num_free_blocks == bm.num_blocks - 3
    stats = scheduler.get_stats()
    assert (stats["spec_num_drafts"], stats["spec_num_draft_tokens"], stats["spec_num_accepted_tokens"]) == (1, 4, 2)
    assert stats["spec_acceptance_rate"] == 0.5 and stats["spec_mean_accepted_length"] == 3.0


def test_a_stop_inside_accepted_drafts_finishes_there_and_frees_every_block():
    scheduler, bm = spec_scheduler()
    seq = prefill_and_first_token(scheduler, num_tokens=6)
    run_step(scheduler, lambda item: [50, 51, 52, 53, 54],
             check_stop=lambda s, token: "stop" if token == 51 else None)
    assert seq.finished and seq.output_token_ids == [7, 50, 51]
    assert bm.num_free_blocks == bm.num_blocks and all(r == 0 for r in bm.ref_counts)
    # Only blocks of appended tokens got a hash: [0..5, 7, 50] fills the first two.
    assert len(bm.cached) == 2


def test_drafts_never_overshoot_max_tokens_or_the_context():
    scheduler, _ = spec_scheduler(k=8)
    seq = prefill_and_first_token(scheduler, max_tokens=4)
    sched = run_step(scheduler, lambda item: [50, 51, 52])
    assert len(sched.scheduled[0].draft_token_ids) == 2  # 1 out + 2 drafts + 1 = max_tokens
    scheduler, _ = spec_scheduler(k=8, max_model_len=13)
    seq = prefill_and_first_token(scheduler, num_tokens=9)  # 10 tokens: 3 more fit
    sched = scheduler.schedule()
    assert len(sched.scheduled[0].draft_token_ids) == 2 and seq.num_tokens == 10


def test_drafts_fit_the_budget_and_never_cause_preemption():
    scheduler, bm = spec_scheduler(budget=3)
    prefill = make_request(2)
    scheduler.add(prefill)
    run_step(scheduler, lambda item: [7])
    sched = scheduler.schedule()
    assert sched.scheduled[0].draft_token_ids == [50, 51]  # budget 3: its token + 2 drafts
    scheduler, bm = spec_scheduler(num_blocks=2)
    seq = prefill_and_first_token(scheduler, num_tokens=7)  # 2 blocks: every block taken
    sched = scheduler.schedule()
    assert sched.scheduled[0].draft_token_ids == [] and scheduler.num_preemptions == 0


def test_no_drafts_above_the_batch_size():
    scheduler, _ = spec_scheduler(batch=1)
    for index in range(2):
        scheduler.add(make_request(5, index=index))
    run_step(scheduler, lambda item: [7])
    sched = scheduler.schedule()
    assert [item.draft_token_ids for item in sched.scheduled] == [[], []]


def test_adaptive_k_shrinks_on_rejections_and_pauses_after_a_miss():
    scheduler, _ = spec_scheduler(adaptive=True)
    seq = prefill_and_first_token(scheduler)
    run_step(scheduler, lambda item: [50, 99])            # 1 of 4 accepted: K -> 2
    assert len(scheduler.schedule().scheduled[0].draft_token_ids) == 2
    scheduler, _ = spec_scheduler(adaptive=True)
    seq = prefill_and_first_token(scheduler)
    run_step(scheduler, lambda item: [99])                # a miss: 2 steps without drafts
    drafts = [len(run_step(scheduler, lambda item: [99]).scheduled[0].draft_token_ids) for _ in range(3)]
    assert drafts == [0, 0, 1]
    assert seq.spec_state.k == 1


def test_ngram_proposer_takes_the_longest_suffix_and_its_latest_occurrence():
    proposer = NgramProposer(1, 3)
    seq = make_request(1).seqs[0]
    seq.token_ids = [1, 2, 3, 9, 1, 2, 3, 8, 5, 2, 3]
    draft, index = proposer.propose(seq, None, 3)
    assert draft == [8, 5, 2]   # "2 3" last seen before the end at position 6 ("1 2 3" has no match)
    seq.token_ids += [8]        # suffix "2 3 8": seen at 5..7, followed by 5 2 3
    assert proposer.propose(seq, index, 5)[0] == [5, 2, 3, 8]
    seq.token_ids = [4, 4, 4]
    assert proposer.propose(seq, None, 4)[0] == [4]  # the suffix itself is never its own match
    seq.token_ids = [1, 2, 3]
    assert proposer.propose(seq, None, 4)[0] == []


def test_ngram_proposer_drafts_code_modality_prompt_tokens_as_their_twins():
    proposer = NgramProposer(1, 2, remap=[0, 1, 2, 10, 4, 5, 6, 7, 8, 9, 10])
    seq = make_request(1).seqs[0]
    seq.token_ids, seq.modality = [1, 2, 3, 4, 1, 2], [1, 1, 1, 1, 1, 1]
    assert proposer.propose(seq, None, 2)[0] == [10, 4]


def test_speculative_config_checks_name_the_key():
    import pytest

    assert SpeculativeConfig.from_option(None) is None
    config = SpeculativeConfig.from_option('{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 5}')
    assert (config.num_speculative_tokens, config.prompt_lookup_max, config.prompt_lookup_min) == (3, 5, 5)
    for bad, key in [({"method": "eagle", "num_speculative_tokens": 2}, "method"),
                     ({"method": "ngram"}, "num_speculative_tokens"),
                     ({"num_speculative_tokens": 0}, "num_speculative_tokens"),
                     ({"num_speculative_tokens": 2, "prompt_lookup_max": 2, "prompt_lookup_min": 3}, "prompt_lookup_min"),
                     ({"num_speculative_tokens": 2, "colour": 1}, "unknown keys"),
                     ("{not json", "JSON"), ([1], "dict")]:
        with pytest.raises(ValueError, match=key):
            SpeculativeConfig.from_option(bad)


def test_spec_decode_imports_no_torch():
    code = ("import sys, engine.core.spec_decode, engine.worker.ngram_proposer, engine.speculative; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
