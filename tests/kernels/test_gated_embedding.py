"""gated_embedding (C++ and Triton) against the torch reference: it is data movement (plus one fp32
add for learned positions), so results are exact."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import nan_poisoned_empty
from kernels import reference


def _inputs(num_tokens, vocab, hidden, dtype, with_wpe):
    ids = torch.randint(0, vocab, (num_tokens,))
    modality = torch.randint(0, 2, (num_tokens,))
    remap = torch.randperm(vocab)
    wte = torch.randn(vocab, hidden).to(dtype)
    wpe = torch.randn(64, hidden).to(dtype) if with_wpe else None
    positions = torch.randint(0, 64, (num_tokens,))
    return ids, modality, remap, wte, wpe, positions


@pytest.mark.parametrize("with_wpe", [True, False], ids=["wpe", "no_wpe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("num_tokens,hidden", [(1, 64), (7, 80), (97, 48)])
def test_gated_embedding(num_tokens, hidden, dtype, with_wpe, backend):
    _, ops = backend
    args = _inputs(num_tokens, 50, hidden, dtype, with_wpe)
    expected = reference.gated_embedding(*args)
    with nan_poisoned_empty():
        actual = ops.gated_embedding(*args)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual, expected)
    assert not actual.isnan().any()


def test_gated_embedding_rejects_bad_inputs(backend):
    _, ops = backend
    ids, modality, remap, wte, wpe, positions = _inputs(5, 50, 16, torch.float32, True)
    with pytest.raises(TypeError, match="wte"):
        ops.gated_embedding(ids, modality, remap, wte.double(), None, positions)
    with pytest.raises(TypeError, match="wpe"):
        ops.gated_embedding(ids, modality, remap, wte, wpe.bfloat16(), positions)
    with pytest.raises(ValueError, match="modality"):
        ops.gated_embedding(ids, modality[:3], remap, wte, wpe, positions)
    with pytest.raises(ValueError, match="wpe"):
        ops.gated_embedding(ids, modality, remap, wte, wpe[:, :8], positions)


def test_cpu_gated_embedding_checks_indices(cpu_ops):
    ids, modality, remap, wte, wpe, positions = _inputs(5, 50, 16, torch.float32, True)
    with pytest.raises(ValueError, match="ids"):
        cpu_ops.gated_embedding(ids + 50, modality, remap, wte, wpe, positions)
    with pytest.raises(ValueError, match="remap"):
        cpu_ops.gated_embedding(ids, torch.ones_like(modality), remap + 50, wte, wpe, positions)
    with pytest.raises(ValueError, match="positions"):
        cpu_ops.gated_embedding(ids, modality, remap, wte, wpe, positions + 64)
