"""BlockManager on its own: plain Python (no torch), free list, ref counts, prefix reuse, copy-on-write."""
import subprocess
import sys

import pytest

from engine.core.block_manager import BlockManager
from engine.core.sampling_params import SamplingParams
from engine.core.sequence import Request, Sequence

BLOCK = 4


def make_seq(token_ids, n=1, seq_id=0, **params) -> Sequence:
    request = Request(f"r{seq_id}", None, list(token_ids), [0] * len(token_ids),
                      SamplingParams(n=n, **params), seq_id)
    request.seqs = [Sequence(seq_id * 10 + i, request, i) for i in range(n)]
    return request.seqs[0]


def compute(bm: BlockManager, seq: Sequence, num_tokens: int) -> list:
    copies = bm.append_slots(seq, num_tokens)
    seq.num_computed_tokens += num_tokens
    bm.register_full_blocks(seq)
    return copies


def test_imports_no_torch():
    code = "import sys, engine.core.block_manager; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_allocate_and_free_returns_every_block():
    bm = BlockManager(8, BLOCK)
    seq = make_seq(range(10))
    assert bm.blocks_needed(10) == 3 and bm.slots_needed(seq, 10) == 3
    compute(bm, seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    assert all(bm.ref_counts[b] == 1 for b in seq.block_table)
    bm.free_seq(seq)
    assert bm.num_free_blocks == 8 and not any(bm.ref_counts) and seq.block_table == []


def test_prompt_logprobs_take_no_cached_block_of_a_position_they_need():
    bm = BlockManager(8, BLOCK)
    compute(bm, make_seq(range(10)), 10)
    scored = make_seq(range(10), seq_id=1, prompt_logprobs=0)
    bm.allocate_cached_prefix(scored)
    assert scored.block_table == [] and scored.num_computed_tokens == 0
    # Preempted once positions 0..4 gave their logprobs: the first block may come from the cache.
    scored.request.prompt_logprobs += [{}] * 5
    bm.allocate_cached_prefix(scored)
    assert scored.num_computed_tokens == BLOCK
    bm.free_seq(scored)
    scored.request.prompt_logprobs += [{}] * 4   # all known: like any other request
    bm.allocate_cached_prefix(scored)
    assert scored.num_computed_tokens == 2 * BLOCK


def test_prefix_reuse_takes_the_full_blocks_only():
    bm = BlockManager(8, BLOCK)
    first = make_seq(range(10))
    compute(bm, first, 10)
    second = make_seq([*range(9), 99], seq_id=1)  # shares two full blocks, then differs
    bm.allocate_cached_prefix(second)
    assert second.block_table == first.block_table[:2]
    assert second.num_computed_tokens == 2 * BLOCK
    assert all(bm.ref_counts[b] == 2 for b in second.block_table)


def test_modality_is_part_of_the_prefix_key():
    bm = BlockManager(8, BLOCK)
    compute(bm, make_seq(range(8)), 8)
    code = make_seq(range(8), seq_id=1)
    code.modality = [1] * 8
    bm.allocate_cached_prefix(code)
    assert code.block_table == [] and code.num_computed_tokens == 0


def test_no_reuse_without_prefix_caching():
    bm = BlockManager(8, BLOCK, enable_prefix_caching=False)
    compute(bm, make_seq(range(8)), 8)
    again = make_seq(range(8), seq_id=1)
    bm.allocate_cached_prefix(again)
    assert again.block_table == [] and not bm.cached


def test_freed_blocks_keep_their_hash_until_reused():
    bm = BlockManager(4, BLOCK)
    first = make_seq(range(8))
    compute(bm, first, 8)
    blocks = list(first.block_table)
    bm.free_seq(first)
    revived = make_seq([*range(8), 50], seq_id=1)  # the last token is always computed
    bm.allocate_cached_prefix(revived)
    assert revived.block_table == blocks and bm.num_free_blocks == 2


def test_fork_shares_blocks_and_copies_the_partial_one_on_write():
    bm = BlockManager(8, BLOCK)
    parent = make_seq(range(6), n=2)
    compute(bm, parent, 6)
    child = parent.request.seqs[1]
    bm.fork(parent, child)
    child.num_computed_tokens = parent.num_computed_tokens
    assert child.block_table == parent.block_table
    assert all(bm.ref_counts[b] == 2 for b in parent.block_table)
    partial = parent.block_table[1]
    copies = bm.append_slots(child, 1)  # writes into the shared, partly filled block
    assert copies == [(partial, child.block_table[1])] and child.block_table[1] != partial
    assert bm.ref_counts[partial] == 1 and bm.ref_counts[child.block_table[0]] == 2


def test_too_few_blocks_is_refused():
    with pytest.raises(ValueError, match="num_kv_blocks"):
        BlockManager(0, BLOCK)
