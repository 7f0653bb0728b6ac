"""ModelRunner on its own: a hand-made SchedulerOutput in, one flat batch through the model, the
samples (and failures) out, against transformers' greedy next token."""
import pytest
import torch

from engine.config import CacheConfig, load_config
from engine.core.block_manager import BlockManager
from engine.core.sampling_params import SamplingParams
from engine.core.sched_output import ScheduledSeq, SchedulerOutput
from engine.core.sequence import Request, Sequence
from engine.vocab import Vocabulary
from engine.worker.model_runner import ModelRunner
from tests.checkpoints import hf_greedy, hf_model

BLOCK = 4
GREEDY = SamplingParams(temperature=0, max_tokens=4)


@pytest.fixture(scope="module")
def runner(tiny_codegen_dir):
    config = load_config(tiny_codegen_dir)
    return ModelRunner(config, tiny_codegen_dir, torch.float32, torch.device("cpu"), "torch",
                       CacheConfig(block_size=BLOCK, num_kv_blocks=32), max_num_seqs=4,
                       vocab=Vocabulary(config.vocab_size), sample_vocab_size=config.vocab_size)


def placed(bm: BlockManager, ids: list[int], index: int, params=GREEDY) -> Sequence:
    request = Request(f"r{index}", None, ids, [0] * len(ids), params, index)
    seq = Sequence(index, request, 0)
    seq.generator = torch.Generator().manual_seed(0)
    request.seqs.append(seq)
    bm.append_slots(seq, len(ids))
    return seq


def test_prefill_samples_transformers_next_token(runner, tiny_codegen_dir):
    bm = BlockManager(runner.num_kv_blocks, BLOCK)
    a, b = placed(bm, [5, 9, 2, 7, 11, 3], 0), placed(bm, [8, 1, 4], 1)
    sched = SchedulerOutput([ScheduledSeq(a, 6, True), ScheduledSeq(b, 3, True)], [])
    output = runner.execute(sched)
    assert output.seqs == [a, b] and not output.failed
    hf = hf_model(tiny_codegen_dir)
    expected = [hf_greedy(hf, s.token_ids, 1, runner.sample_vocab_size)[0] for s in (a, b)]
    assert output.sampled.token_ids == expected


def test_a_chunk_that_does_not_reach_the_end_samples_nothing(runner):
    bm = BlockManager(runner.num_kv_blocks, BLOCK)
    seq = placed(bm, list(range(10, 19)), 0)
    output = runner.execute(SchedulerOutput([ScheduledSeq(seq, 5, False)], []))
    assert output.seqs == [] and output.sampled.token_ids == [] and not output.failed
    written = runner.kv_cache[:, :, seq.block_table[0]]
    assert written.abs().sum() > 0  # the chunk's keys and values are in the cache


def test_prompt_logprob_rows_go_through_the_last_layer(runner, tiny_codegen_dir, monkeypatch):
    bm = BlockManager(runner.num_kv_blocks, BLOCK)
    scored = placed(bm, [5, 9, 2, 7, 11, 3, 8, 4, 6], 0, SamplingParams(prompt_logprobs=1))
    first = runner.execute(SchedulerOutput([ScheduledSeq(scored, 2, False)], []))
    scored.request.prompt_logprobs += first.prompt_logprobs["r0"]  # tokens 1 and 2
    scored.num_computed_tokens = 1  # this chunk recomputes position 1, whose logprob is known
    other = placed(bm, [8, 1, 4], 1)
    metas = []
    real = runner.model.forward
    monkeypatch.setattr(runner.model, "forward", lambda ids, mods, remap, meta: (
        metas.append(meta), real(ids, mods, remap, meta))[1])
    output = runner.execute(SchedulerOutput([ScheduledSeq(scored, 6, False),
                                             ScheduledSeq(other, 3, True)], []))
    # scored's chunk covers positions 1..6; 2..6 give the logprobs of tokens 3..7.
    assert metas[0].last_rows.tolist() == [1, 2, 3, 4, 5, 8]
    assert metas[0].last_cu_seqlens_q.tolist() == [0, 5, 6]
    assert output.seqs == [other] and list(output.prompt_logprobs) == ["r0"]
    ids = scored.token_ids
    with torch.no_grad():
        ref = hf_model(tiny_codegen_dir)(torch.tensor([ids])).logits[0].log_softmax(-1)
    entries = scored.request.prompt_logprobs[1:] + output.prompt_logprobs["r0"]
    assert [next(iter(e)) for e in entries] == ids[1:8]
    for p, entry in enumerate(entries):
        assert entry[ids[p + 1]] == pytest.approx(ref[p, ids[p + 1]].item(), abs=1e-4)
        assert max(entry, key=entry.get) == int(ref[p].argmax())


def test_block_copies_run_before_the_forward_pass(runner):
    bm = BlockManager(runner.num_kv_blocks, BLOCK)
    seq = placed(bm, [5, 9, 2], 0)
    runner.kv_cache[:, :, 30] = 1.5
    runner.execute(SchedulerOutput([ScheduledSeq(seq, 3, True)], [(30, 31)]))
    assert torch.equal(runner.kv_cache[:, :, 31], runner.kv_cache[:, :, 30])


def test_a_failing_request_is_reported_not_raised(runner, monkeypatch):
    bm = BlockManager(runner.num_kv_blocks, BLOCK)
    good, bad = placed(bm, [5, 9, 2], 0), placed(bm, [8, 1, 4], 1)
    real = runner.model.forward

    def forward(ids, *args):
        if 8 in ids.tolist():
            raise RuntimeError("poisoned row")
        return real(ids, *args)

    monkeypatch.setattr(runner.model, "forward", forward)
    output = runner.execute(SchedulerOutput([ScheduledSeq(good, 3, True), ScheduledSeq(bad, 3, True)], []))
    assert output.seqs == [good] and len(output.sampled.token_ids) == 1
    assert list(output.failed) == ["r1"] and isinstance(output.failed["r1"], RuntimeError)


def test_auto_dtype_is_int8_for_large_cpu_models(tiny_codegen_dir):
    """dtype "auto": int8 on the CPU from AUTO_INT8_MIN_WEIGHTS linear weights up (decode reads every
    weight per step), bf16 below and on GPUs; explicit dtypes are kept."""
    import dataclasses

    from engine.worker.model_runner import AUTO_INT8_MIN_WEIGHTS, linear_weights, resolve_dtype
    small = load_config(tiny_codegen_dir)
    # CodeGen-350M's shape: 20 layers of hidden 1024, MLP 4096 (252M linear weights)
    large = dataclasses.replace(small, num_layers=20, hidden_size=1024, intermediate_size=4096)
    assert linear_weights(small) < AUTO_INT8_MIN_WEIGHTS <= linear_weights(large) == 20 * 12 * 1024 ** 2
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, large) == torch.int8
    assert resolve_dtype("auto", cpu, small) == torch.bfloat16
    assert resolve_dtype("auto", cuda, large) == torch.bfloat16
    assert resolve_dtype("bfloat16", cpu, large) == torch.bfloat16
