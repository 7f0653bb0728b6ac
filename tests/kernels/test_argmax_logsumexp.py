"""argmax_logsumexp (the sampler's row reductions) on every backend against the torch reference:
odd vocabularies, strided rows, ties, masked (-inf) ids, NaN and inf rows, many rows (the C++
op's parallel path) and bad arguments."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import assert_close
from kernels import reference


@pytest.fixture(params=["cpu", "triton"])
def ops(request):
    return request.getfixturevalue(f"{request.param}_ops")


def _check(ops, logits):
    argmax, lse = ops.argmax_logsumexp(logits)
    ref_argmax, ref_lse = reference.argmax_logsumexp(logits)
    assert argmax.dtype == torch.int64 and lse.dtype == torch.float32
    assert torch.equal(argmax, ref_argmax), (argmax, ref_argmax)
    assert torch.equal(lse.isnan(), ref_lse.isnan()) and torch.equal(lse.isinf(), ref_lse.isinf())
    finite = ref_lse.isfinite()
    assert_close(lse[finite], ref_lse[finite], "logsumexp")
    assert torch.equal(lse[~finite].nan_to_num(0.0), ref_lse[~finite].nan_to_num(0.0))


@pytest.mark.parametrize("rows,vocab", [(1, 1), (1, 7), (3, 97), (2, 4096), (5, 51200), (40, 50295)])
def test_matches_reference(rows, vocab, ops):
    _check(ops, torch.randn(rows, vocab) * 4)


def test_strided_rows_and_masked_ids(ops):
    logits = (torch.randn(6, 1000) * 3)[:, 13:990]  # row stride 1000, vocab 977
    logits[:, ::3] = float("-inf")                  # masked ids (CodeCLM's twins, padding)
    _check(ops, logits)


def test_ties_take_the_first_index(ops):
    logits = torch.zeros(3, 301)
    logits[1, [5, 80, 300]] = 2.0
    logits[2, 300] = 1.0
    argmax, _ = ops.argmax_logsumexp(logits)
    assert argmax.tolist() == [0, 5, 300]
    _check(ops, logits)


def test_special_rows(ops):
    logits = torch.randn(5, 333)
    logits[0] = float("-inf")                       # everything masked: index 0, -inf
    logits[1, 17] = float("nan")                    # NaN wins, and poisons the normaliser
    logits[2, [3, 200]] = float("inf")
    logits[3, 40] = 1e30                            # huge but finite
    logits[4, :] = -1e30
    _check(ops, logits)
    argmax, lse = ops.argmax_logsumexp(logits)
    assert argmax[1] == 17 and lse[1].isnan() and lse[0] == float("-inf") and lse[2] == float("inf")


def test_no_rows(ops):
    argmax, lse = ops.argmax_logsumexp(torch.empty(0, 50))
    assert argmax.shape == (0,) and lse.shape == (0,)


def test_bad_arguments(cpu_ops):
    with pytest.raises(TypeError, match="logits"):
        cpu_ops.argmax_logsumexp(torch.zeros(2, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="logits"):
        cpu_ops.argmax_logsumexp(torch.zeros(8))
    with pytest.raises(ValueError, match="logits"):
        cpu_ops.argmax_logsumexp(torch.zeros(8, 4).t())  # a strided last dim
    with pytest.raises(ValueError, match="logits"):
        cpu_ops.argmax_logsumexp(torch.zeros(3, 0))
