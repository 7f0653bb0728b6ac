"""Scheduler on its own (no torch, no model): token budget, chunked prefill, preemption, forks and
the step's settlement in update_from_output."""
import subprocess
import sys
from types import SimpleNamespace

from engine.core.block_manager import BlockManager
from engine.core.sampling_params import SamplingParams
from engine.core.sched_output import ModelRunnerOutput
from engine.core.scheduler import Scheduler
from engine.core.sequence import Request, Sequence, SequenceStatus

BLOCK = 4


def make_request(num_tokens: int, n: int = 1, index: int = 0, max_tokens: int = 8) -> Request:
    ids = list(range(index * 100, index * 100 + num_tokens))
    request = Request(f"r{index}", None, ids, [0] * num_tokens,
                      SamplingParams(n=n, max_tokens=max_tokens), index)
    request.seqs = [Sequence(index * 10 + i, request, i) for i in range(n)]
    return request


def sampled(tokens: list[int]):
    return SimpleNamespace(token_ids=tokens, logprobs=[0.0] * len(tokens),
                           top_logprobs=[None] * len(tokens))


def settle(scheduler: Scheduler, sched, token: int = 7, check_stop=lambda seq, token: None):
    """What the model runner would return: one token for every sequence that samples."""
    seqs = [s for item in sched.scheduled if item.sample for s in [item.seq, *item.forks]]
    output = ModelRunnerOutput(seqs, sampled([token] * len(seqs)))
    return scheduler.update_from_output(sched, output, check_stop), output


def test_imports_no_torch():
    code = "import sys, engine.core.scheduler; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_budget_chunks_a_long_prompt_then_decodes():
    scheduler = Scheduler(BlockManager(16, BLOCK), max_num_seqs=4, max_num_batched_tokens=8)
    request = make_request(13)
    scheduler.add(request)
    seq = request.seqs[0]
    chunks = []
    while seq.num_output_tokens == 0:
        sched = scheduler.schedule()
        chunks.append((sched.scheduled[0].num_new_tokens, sched.scheduled[0].sample))
        settle(scheduler, sched)
    assert chunks == [(8, False), (5, True)]
    sched = scheduler.schedule()  # decode: one token
    assert [(i.num_new_tokens, i.sample) for i in sched.scheduled] == [(1, True)]


def test_update_from_output_advances_and_registers_blocks():
    bm = BlockManager(16, BLOCK)
    scheduler = Scheduler(bm, 4, 64, generated_modality=1)
    request = make_request(9)
    scheduler.add(request)
    advanced, _ = settle(scheduler, scheduler.schedule(), token=5)
    seq = request.seqs[0]
    assert advanced == [request]
    assert seq.num_computed_tokens == 9 and seq.token_ids[-1] == 5 and seq.modality[-1] == 1
    assert seq.num_registered_blocks == 2 and len(bm.cached) == 2


def test_check_stop_finishes_and_frees():
    bm = BlockManager(16, BLOCK)
    scheduler = Scheduler(bm, 4, 64)
    request = make_request(5)
    scheduler.add(request)
    settle(scheduler, scheduler.schedule(), check_stop=lambda seq, token: "stop")
    seq = request.seqs[0]
    assert seq.finished and seq.finish_reason == "stop" and not scheduler.running
    assert bm.num_free_blocks == bm.num_blocks


def test_a_failing_check_stop_marks_only_its_request_failed():
    scheduler = Scheduler(BlockManager(16, BLOCK), 4, 64)
    good, bad = make_request(5, index=0), make_request(5, index=1)
    scheduler.add(good)
    scheduler.add(bad)

    def check_stop(seq, token):
        if seq.request is bad:
            raise RuntimeError("detokenizer broke")
        return None

    advanced, output = settle(scheduler, scheduler.schedule(), check_stop=check_stop)
    assert list(output.failed) == ["r1"] and isinstance(output.failed["r1"], RuntimeError)
    assert good.seqs[0].num_output_tokens == 1 and good in advanced


def test_failed_requests_do_not_advance():
    scheduler = Scheduler(BlockManager(16, BLOCK), 4, 64)
    request = make_request(5)
    scheduler.add(request)
    sched = scheduler.schedule()
    output = ModelRunnerOutput([], sampled([]), {"r0": RuntimeError("forward failed")})
    assert scheduler.update_from_output(sched, output, lambda seq, token: None) == []
    assert request.seqs[0].num_computed_tokens == 0 and request.seqs[0].num_output_tokens == 0


def test_samples_fork_when_the_prompt_completes():
    bm = BlockManager(16, BLOCK)
    scheduler = Scheduler(bm, 8, 64)
    request = make_request(6, n=3)
    scheduler.add(request)
    sched = scheduler.schedule()
    assert len(sched.scheduled) == 1 and len(sched.scheduled[0].forks) == 2
    settle(scheduler, sched)
    assert all(s.status == SequenceStatus.RUNNING and s.num_computed_tokens == 6 for s in request.seqs)
    assert all(s.num_output_tokens == 1 for s in request.seqs)
    assert bm.ref_counts[request.seqs[0].block_table[0]] == 3  # the prompt's full block is shared


def test_preempts_the_newest_when_blocks_run_out():
    bm = BlockManager(4, BLOCK)
    scheduler = Scheduler(bm, 4, 64)
    old, new = make_request(7, index=0), make_request(7, index=1)
    scheduler.add(old)
    scheduler.add(new)
    settle(scheduler, scheduler.schedule())  # both prefilled: 2 blocks each, all 4 taken
    assert bm.num_free_blocks == 0
    settle(scheduler, scheduler.schedule())  # token 8 fits the second block of each
    sched = scheduler.schedule()  # token 9 needs a third block each: the newest is preempted
    assert [item.seq.request for item in sched.scheduled] == [old]
    assert scheduler.num_preemptions == 1 and new.seqs[0].status == SequenceStatus.WAITING
    assert new.seqs[0].block_table == [] and list(scheduler.waiting) == [new.seqs[0]]


def test_abort_frees_a_running_request():
    bm = BlockManager(8, BLOCK)
    scheduler = Scheduler(bm, 4, 64)
    request = make_request(6)
    scheduler.add(request)
    settle(scheduler, scheduler.schedule())
    scheduler.abort(request)
    assert request.seqs[0].finish_reason == "abort" and bm.num_free_blocks == 8
    assert scheduler.get_stats()["num_running"] == 0


def test_check_fits_cache_names_the_blocks():
    scheduler = Scheduler(BlockManager(2, BLOCK), 4, 64)
    scheduler.check_fits_cache(8, 1)
    try:
        scheduler.check_fits_cache(9, 1)
    except ValueError as e:
        assert "needs 3 KV blocks, the cache has 2" in str(e)
    else:
        raise AssertionError("no ValueError")
