"""C++ CPU ops (kernels._cpu, pybind11 + OpenMP) behind the same signatures as kernels.reference.
This wrapper checks shapes, dtypes and contiguity, then hands raw pointers to the C++ code."""
from __future__ import annotations

import torch

from kernels import _cpu

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def _dtype_name(t: torch.Tensor, name: str) -> str:
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: the CPU kernels take float32 or bfloat16, got {t.dtype}")
    return _DTYPES[t.dtype]


def _i64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64).contiguous()


def gated_embedding(ids: torch.Tensor, modality: torch.Tensor, remap: torch.Tensor,
                    wte: torch.Tensor, wpe: torch.Tensor | None,
                    positions: torch.Tensor) -> torch.Tensor:
    """See kernels.reference.gated_embedding."""
    dtype = _dtype_name(wte, "wte")
    if wpe is not None and wpe.dtype != wte.dtype:
        raise TypeError(f"wpe dtype {wpe.dtype} differs from wte dtype {wte.dtype}")
    wte = wte.contiguous()
    ids, modality, remap, positions = _i64(ids), _i64(modality), _i64(remap), _i64(positions)
    num_tokens, hidden = ids.shape[0], wte.shape[1]
    out = torch.empty(num_tokens, hidden, dtype=wte.dtype)
    wpe_ptr = 0
    if wpe is not None:
        wpe = wpe.contiguous()
        wpe_ptr = wpe.data_ptr()
    _cpu.gated_embedding(ids.data_ptr(), modality.data_ptr(), remap.data_ptr(), wte.data_ptr(),
                         wpe_ptr, positions.data_ptr(), out.data_ptr(), num_tokens, hidden, dtype)
    return out
