"""LayerProgram: a model's decoder layers as one C++ call per step (csrc/layer_program.cpp).

A model records its layers once, from the ops it has already bound (kernels.cpu's PackedLinear,
RotaryStoreKV, PagedAttention), as a list of ops over row buffers; a step then passes only its rows
and attention metadata. Each op runs the function and argument template its own call would run,
so the results are bit-identical to calling the ops one by one; what goes away is the Python
between them. Every buffer width and dtype is checked here, once, when an op is added.

    program = LayerProgram(hidden, torch.bfloat16)          # buffer 0: the residual stream x
    qkv = program.buffer(3 * hidden, torch.bfloat16)
    program.linear(qkv_proj, src=0, dst=qkv)                 # a bound PackedLinear
    program.store_kv(store, qkv, num_heads, q_col=0, k_col=hidden, v_col=2 * hidden)
    ...
    program(x, positions, slot_mapping, block_tables, seq_lens, cu_seqlens_q)   # x updated in place
"""
from __future__ import annotations

import torch

from . import _cpu
from ._checks import check_device, check_sequences
from .cpu import PagedAttention, RotaryStoreKV, _i32, _i64
from .cpu_linear import _CPU, _DTYPES, PackedLinear

_KERNELS = {"int8": 0, "bf16": 1, "int4": 2}


class LayerProgram:
    """Ops over buffers [rows, width]; buffer 0 is the caller's x, the others the program's scratch."""

    def __init__(self, width: int, dtype: torch.dtype):
        if dtype not in _DTYPES:
            raise TypeError(f"dtype: the CPU kernels take float32 or bfloat16, got {dtype}")
        self._program = _cpu.LayerProgram()
        self._buffers: list[tuple[int, torch.dtype]] = []
        self._operands: list = []  # the bound ops whose tensors the recorded pointers point into
        self.buffer(width, dtype)

    def buffer(self, width: int, dtype: torch.dtype) -> int:
        """A scratch buffer of `width` columns; returns its index."""
        if dtype not in _DTYPES:
            raise TypeError(f"dtype: the CPU kernels take float32 or bfloat16, got {dtype}")
        self._buffers.append((int(width), dtype))
        return self._program.add_buffer(int(width), _DTYPES[dtype])

    def _check(self, index: int, name: str, dtype: torch.dtype, columns: tuple[int, int] | None = None,
               width: int | None = None) -> None:
        if not 0 <= index < len(self._buffers):
            raise ValueError(f"{name}: no buffer {index}")
        have_width, have_dtype = self._buffers[index]
        if have_dtype != dtype:
            raise TypeError(f"{name}: buffer {index} holds {have_dtype}, the op takes {dtype}")
        if width is not None and have_width != width:
            raise ValueError(f"{name}: buffer {index} is {have_width} wide, the op writes {width} columns")
        if columns is not None and not (0 <= columns[0] and columns[0] + columns[1] <= have_width):
            raise ValueError(f"{name}: columns {columns[0]}:{columns[0] + columns[1]} outside buffer "
                             f"{index}'s {have_width}")

    def linear(self, op: PackedLinear, src: int, dst: int, residual: int | None = None,
               act_start: int | None = None, src_col: int = 0) -> None:
        """dst = residual + act(op(src[:, src_col:src_col + in_features])); dst is never src or residual."""
        if not isinstance(op, PackedLinear):
            raise TypeError(f"op: expected a bound kernels.cpu PackedLinear, got {type(op).__name__}")
        n = op.out_features
        self._check(src, "src", op.x_dtype, (src_col, op.in_features))
        self._check(dst, "dst", op.out_dtype, width=n)
        if residual is not None:
            self._check(residual, "residual", op.out_dtype, width=n)
        if dst in (src, residual):
            raise ValueError(f"dst: buffer {dst} is also the op's input")
        if act_start is None:
            act_start = n
        elif not 0 <= act_start <= n:
            raise ValueError(f"act_start: expected None or 0..{n}, got {act_start}")
        self._program.add_linear(op._args, _KERNELS[op.kind], *op._names, src, int(src_col), dst,
                                 -1 if residual is None else residual, int(act_start))
        self._operands.append(op)

    def _check_kv(self, op, num_heads: int) -> int:
        if num_heads <= 0 or num_heads % op.num_kv_heads:
            raise ValueError(f"num_heads: {num_heads} is not a positive multiple of the cache's "
                             f"{op.num_kv_heads} kv heads")
        return op.head_dim

    def store_kv(self, op: RotaryStoreKV, src: int, num_heads: int, q_col: int, k_col: int, v_col: int) -> None:
        """Rotate q and k (columns of src, in place) and write k, v into the cache by slot_mapping."""
        if not isinstance(op, RotaryStoreKV):
            raise TypeError(f"op: expected a bound kernels.cpu RotaryStoreKV, got {type(op).__name__}")
        head_dim = self._check_kv(op, num_heads)
        dtype = self._buffers[src][1] if 0 <= src < len(self._buffers) else None
        self._check(src, "src", dtype, (q_col, num_heads * head_dim))
        for name, col in (("k_col", k_col), ("v_col", v_col)):
            self._check(src, name, dtype, (col, op.num_kv_heads * head_dim))
        self._program.add_store_kv(op._args, _DTYPES[dtype], op._cache_dtype, src, int(q_col), int(k_col),
                                   int(v_col), int(num_heads))
        self._operands.append(op)

    def attend(self, op: PagedAttention, src: int, num_heads: int, q_col: int, dst: int) -> None:
        """dst = paged attention of the queries in src's columns q_col: (num_heads x head_dim)."""
        if not isinstance(op, PagedAttention):
            raise TypeError(f"op: expected a bound kernels.cpu PagedAttention, got {type(op).__name__}")
        head_dim = self._check_kv(op, num_heads)
        dtype = self._buffers[src][1] if 0 <= src < len(self._buffers) else None
        self._check(src, "src", dtype, (q_col, num_heads * head_dim))
        self._check(dst, "dst", dtype, width=num_heads * head_dim)
        if dst == src:
            raise ValueError(f"dst: buffer {dst} is also the op's input")
        self._program.add_attend(op._args, _DTYPES[dtype], op._cache_dtype, src, int(q_col), int(num_heads), dst)
        self._operands.append(op)

    @property
    def num_ops(self) -> int:
        return self._program.num_ops

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor,
                 num_ops: int | None = None) -> torch.Tensor:
        """x: [num_tokens, width_0] contiguous, updated in place and returned; the metadata as
        kernels.reference.paged_attention and rotary_store_kv take it. num_ops: run only the first
        num_ops ops (None: all)."""
        if num_ops is not None and not 0 <= num_ops <= self.num_ops:
            raise ValueError(f"num_ops must be in [0, {self.num_ops}] or None, got {num_ops}")
        width, dtype = self._buffers[0]
        check_device(_CPU, x=x, positions=positions, slot_mapping=slot_mapping, block_tables=block_tables,
                     seq_lens=seq_lens, cu_seqlens_q=cu_seqlens_q)
        if x.dtype != dtype or x.dim() != 2 or x.shape[1] != width or not x.is_contiguous():
            raise ValueError(f"x: expected a contiguous [rows, {width}] {dtype} tensor, got "
                             f"{list(x.shape)} {x.dtype}")
        num_tokens = x.shape[0]
        for name, t in (("positions", positions), ("slot_mapping", slot_mapping)):
            if t.shape != (num_tokens,):
                raise ValueError(f"{name}: expected [{num_tokens}], got {list(t.shape)}")
        check_sequences(block_tables, seq_lens, cu_seqlens_q)
        positions, slot_mapping = _i64(positions), _i64(slot_mapping)
        block_tables, seq_lens, cu_seqlens_q = _i32(block_tables), _i32(seq_lens), _i32(cu_seqlens_q)
        self._program.run(x.data_ptr(), positions.data_ptr(), slot_mapping.data_ptr(), block_tables.data_ptr(),
                          seq_lens.data_ptr(), cu_seqlens_q.data_ptr(), num_tokens, block_tables.shape[0],
                          block_tables.shape[1], -1 if num_ops is None else num_ops)
        return x
