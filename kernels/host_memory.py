"""Host memory for weights: a large buffer gets an anonymous mapping of its own with transparent
huge pages asked for (madvise), so filling it takes one page fault per 2 MB instead of one per
4 KB. Loading a CodeGen-6B checkpoint in int8 touches ~30 GB of new pages (read buffers, re-laid
out and merged projections, packed weights); with 4 KB pages the faults alone took more system
time than all of the quantisation's user time."""
from __future__ import annotations

import math
import mmap

import torch

HUGE_PAGE_BYTES = 2 << 20  # below this a plain torch allocation


def empty(shape: tuple[int, ...] | list[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor; from HUGE_PAGE_BYTES up backed by its own mapping
    (unmapped when the last tensor using it is freed)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < HUGE_PAGE_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # huge pages off in this kernel: the same buffer on plain pages
        pass
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).view(shape)
