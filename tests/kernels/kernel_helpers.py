"""Helpers of the kernel tests: per-dtype tolerances, a verbose allclose, strided inputs,
paged-cache builders."""
from __future__ import annotations

import contextlib

import torch

# (atol, rtol) of kernel outputs against kernels.reference, by output dtype. fp32 differs from the
# reference only in summation order and FMA contraction; bf16 outputs may differ by one rounding
# step (2^-8 relative) when the fp32 values on either side of a rounding boundary differ slightly.
TOLERANCES = {
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (1e-2, 1.6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "output") -> None:
    """allclose with the dtype's tolerance that says where and by how much it failed."""
    atol, rtol = TOLERANCES[expected.dtype]
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.float(), expected.float()
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol)
    if bad.any():
        idx = bad.nonzero()
        err = (a - e).abs().nan_to_num(float("inf"))
        worst = tuple(int(i) for i in (err == err.max()).nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements outside atol={atol} rtol={rtol}; "
            f"first at {tuple(idx[0].tolist())}: {a[tuple(idx[0])]:.6g} vs {e[tuple(idx[0])]:.6g}; "
            f"worst at {worst}: {a[worst]:.6g} vs {e[worst]:.6g}; NaNs in actual: {int(a.isnan().sum())}")


def strided(rows: int, cols: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """[rows, cols] view whose rows are further apart than cols (a slice of a wider tensor)."""
    return (torch.randn(rows, cols + 5) * scale)[:, 2:cols + 2].to(dtype)


def random_block_tables(seq_lens: list[int], block_size: int, extra_blocks: int = 3):
    """Shuffled physical blocks per sequence. Returns (block_tables [num_seqs, max_blocks] int32,
    num_blocks); unused table entries point at valid blocks so the gathering reference can run."""
    need = [(n + block_size - 1) // block_size for n in seq_lens]
    num_blocks = sum(need) + extra_blocks
    perm = torch.randperm(num_blocks, dtype=torch.int32)
    max_blocks = max(need) + 1
    tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    start = 0
    for b, n in enumerate(need):
        tables[b, :n] = perm[start:start + n]
        start += n
    return tables, num_blocks


def filled_caches(seq_lens, tables, num_blocks, block_size, num_kv_heads, head_dim, dtype):
    """NaN-poisoned caches with random k, v in the slots of every sequence's tokens."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    for b, n in enumerate(seq_lens):
        pos = torch.arange(n)
        blocks, offsets = tables[b, pos // block_size].long(), pos % block_size
        k_cache[blocks, offsets] = torch.randn(n, num_kv_heads, head_dim).to(dtype)
        v_cache[blocks, offsets] = torch.randn(n, num_kv_heads, head_dim).to(dtype)
    return k_cache, v_cache


@contextlib.contextmanager
def nan_poisoned_empty():
    """Inside the block, torch.empty / empty_like hand out NaN-filled float tensors, so an output
    buffer an op allocates itself fails the comparison wherever the op does not write it."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty = lambda *args, **kwargs: poison(empty(*args, **kwargs))
    torch.empty_like = lambda *args, **kwargs: poison(empty_like(*args, **kwargs))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like
