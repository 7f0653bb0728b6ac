"""The last layer runs attention, out_proj and the MLP on the rows that give logits only
(meta.last_rows: a suffix of each sequence's chunk, its last row when it samples, more for prompt
logprobs): those rows come out as in a full forward, and every row's K and V are still written."""
import pytest
import torch

from engine import LLM
from engine.layers.attention import AttentionMetadata


def _meta(lens, block_size):
    """Two prefill chunks (whole prompts) in fresh blocks: sequence b owns blocks b * 8 ...."""
    positions = torch.cat([torch.arange(n) for n in lens])
    slots = torch.cat([b * 8 * block_size + torch.arange(n) for b, n in enumerate(lens)])
    tables = torch.stack([torch.arange(b * 8, b * 8 + 8, dtype=torch.int32) for b in range(len(lens))])
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return AttentionMetadata(positions=positions, slot_mapping=slots, block_tables=tables,
                             seq_lens=torch.tensor(lens, dtype=torch.int32), cu_seqlens_q=cu)


# (kept rows, rows kept per sequence): the sampled rows; a prompt-logprobs suffix crossing the
# local-attention window (16) and a sampled row; a whole chunk and nothing of the other.
KEPT = [([36, 57], [1, 1]), ([*range(12, 37), 57], [25, 1]), ([*range(0, 37)], [37, 0])]


@pytest.mark.parametrize("kept, per_seq", KEPT)
@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("which", ["codegen", "gptneo"])
def test_last_rows_match_full_forward(tiny_codegen_dir, tiny_gptneo_dir, which, dtype, kept, per_seq):
    model_dir = tiny_codegen_dir if which == "codegen" else tiny_gptneo_dir
    runner = LLM(model=str(model_dir), dtype=dtype, num_kv_blocks=32).engine.runner
    lens = [37, 21]
    ids = torch.randint(1, 200, (sum(lens),))
    mods = torch.zeros_like(ids)
    with torch.inference_mode():
        full = runner.model(ids, mods, runner.remap, _meta(lens, runner.block_size))
        kv_full = runner.kv_cache.clone()
        runner.kv_cache.zero_()
        if runner.kv_scale is not None:
            runner.kv_scale.zero_()
        meta = _meta(lens, runner.block_size)
        meta.last_rows = torch.tensor(kept)
        meta.last_cu_seqlens_q = torch.tensor([0, per_seq[0], sum(per_seq)], dtype=torch.int32)
        last = runner.model(ids, mods, runner.remap, meta)
    assert last.shape == (len(kept), full.shape[1])
    torch.testing.assert_close(last, full[kept], rtol=1e-4, atol=1e-4)
    assert torch.equal(runner.kv_cache, kv_full)  # the last layer still stored every row
