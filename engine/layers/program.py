"""A step's decoder layers as one C++ call on the CPU backend (kernels/cpu_program.py).

A small model's decode step is mostly host work: five or six op calls per layer, each with its
Python wrapper, checks and output allocation (benchmarks/step_overhead.py). A model records its
layers once into a LayerProgram, from the ops the layers have already bound, and a step then makes
one call.
The ops and their argument templates are the ones the layer-by-layer path runs, so both paths give
bit-identical results (tests/layers/test_program.py).

DecoderProgram keeps a model's program and the bindings it was recorded from, and records it again
when one of them changes (a new KV cache, a module moved with `.to()`). The layer-by-layer path runs
when the backend is not the C++ one or a linear is not packed (fp32, an unfused activation). A step
that keeps fewer rows than it computes through the last layer (meta.last_rows: a prefill chunk,
alone or beside decode rows, as a server's steps mostly are) runs every layer but the last through
the program and the last one by one, on the kept rows only."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import kernel_package
from .quant import PackedLinearBase

# record(cpu_program, dtype) -> (LayerProgram, [(object, attribute) watched]) or None (unsupported)
Record = Callable[[object, torch.dtype], tuple | None]
# Steps with more rows run the layers one by one: their GEMMs dwarf the host work, and the
# program's scratch rows (kept for the engine's life) stay bounded (CodeGen-16B: ~57 MB).
MAX_PROGRAM_ROWS = 512


def _cpu_program(ops):
    """kernels.cpu_program when ops is the C++ backend (and it is built), else None."""
    try:
        return kernel_package.load("cpu_program") if ops is kernel_package.load("cpu") else None
    except ImportError:
        return None


class DecoderProgram:
    """The program of a model of num_layers layers: `forward(x, meta)` runs a step's layers through
    it; `get(dtype, num_rows)` -> the LayerProgram, or None. `enabled = False` forces the
    layer-by-layer path (tests, A/B benchmarks)."""

    def __init__(self, ops, record: Record, num_layers: int):
        self.enabled = True
        self.num_layers = num_layers
        self._module = _cpu_program(ops)
        self._record = record
        self._program = self._dtype = None
        self._watched: list[tuple[object, str, object]] = []
        self._unsupported: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor, meta) -> int:
        """x (the embeddings, [num_tokens, hidden]) through the first layers, in place: how many
        it ran (the caller runs the rest one by one). All of them, or all but the last when
        meta.last_rows keeps only some rows there; 0 when the program does not take this step."""
        program = self.get(x.dtype, x.shape[0])
        if program is None:
            return 0
        num_layers, num_ops = self.num_layers, program.num_ops
        if meta.last_rows is not None:
            num_layers -= 1
            num_ops -= program.num_ops // self.num_layers  # every layer is recorded as the same ops
        program(x, meta.positions, meta.slot_mapping, meta.block_tables, meta.seq_lens, meta.cu_seqlens_q,
                num_ops)
        return num_layers

    def get(self, dtype: torch.dtype, num_rows: int):
        if not self.enabled or self._module is None or num_rows > MAX_PROGRAM_ROWS:
            return None
        if self._program is not None and dtype == self._dtype \
                and all(getattr(obj, name) is value for obj, name, value in self._watched):
            return self._program
        if dtype in self._unsupported:
            return None
        built = self._record(self._module, dtype)
        if built is None:
            self._unsupported.add(dtype)
            self._program = None
            return None
        self._program, watched = built
        assert self._program.num_ops % self.num_layers == 0, "layers recorded as different op lists"
        self._dtype = dtype
        self._watched = [(obj, name, getattr(obj, name)) for obj, name in watched]
        return self._program

    def packed(self, linear: nn.Module, dtype: torch.dtype, norm: nn.Module | None = None):
        """linear's bound C++ op for inputs of dtype (through norm), when it is a packed linear whose
        output is in dtype too; else None."""
        if not isinstance(linear, PackedLinearBase) or not getattr(linear, "packed", True):
            return None
        op, out_dtype = linear.bound(dtype, norm)
        return op if isinstance(op, self._module.PackedLinear) and out_dtype == dtype else None

    def attention(self, attn: nn.Module, cos_sin: torch.Tensor | None):
        """(store_kv, attend) of a PagedAttention layer when both are the C++ ones; else None."""
        store, attend = attn.bound_ops(cos_sin)
        if isinstance(store, self._module.RotaryStoreKV) and isinstance(attend, self._module.PagedAttention):
            return store, attend
        return None
