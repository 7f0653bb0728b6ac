"""The paged KV cache: its element type, how many blocks it gets, one zeroed allocation, and the
per-layer views the attention layers read and write."""
from __future__ import annotations

import psutil
import torch

from engine.config import CacheConfig, ModelConfig

# Without num_kv_blocks, the CPU KV cache takes at most this fraction of the available RAM, and at
# most CPU_KV_MEMORY_CAP bytes: the cache is zeroed (faulted in) at start-up, which takes time per GiB.
CPU_KV_MEMORY_FRACTION = 0.25
CPU_KV_MEMORY_CAP = 2 << 30
# On CUDA, this fraction of the free device memory after loading the weights.
CUDA_KV_MEMORY_FRACTION = 0.85


def resolve_kv_cache_dtype(name: str, dtype: torch.dtype, ops) -> torch.dtype:
    """KV-cache element type: "auto" = the activation dtype, "int8" = int8 rows with fp32 scales."""
    if name == "auto":
        return dtype
    if name != "int8":
        raise ValueError(f"kv_cache_dtype must be 'auto' or 'int8', got {name!r}")
    if ops.__name__ == "kernels.triton":
        raise ValueError("kv_cache_dtype 'int8' runs on the CPU kernels (attention_backend 'cpu' or "
                         "'torch'), not on Triton")
    return torch.int8


class KVCache:
    """[num_layers, 2, num_blocks, block_size, num_heads, head_dim]; layer l reads kv[l, 0/1].
    An int8 cache (kv_cache_dtype "int8") has one fp32 scale per (slot, head) beside it."""

    def __init__(self, config: ModelConfig, cache: CacheConfig, dtype: torch.dtype,
                 device: torch.device, ops, max_num_seqs: int):
        self.config, self.block_size, self.device = config, cache.block_size, device
        self.dtype = resolve_kv_cache_dtype(cache.kv_cache_dtype, dtype, ops)
        self.num_blocks = self._num_blocks(cache, max_num_seqs)
        shape = (config.num_layers, 2, self.num_blocks, cache.block_size, config.num_heads)
        # Zeroed, not just allocated: every page is faulted in now rather than by the step that
        # first writes a block, inside a decode step.
        self.kv = torch.zeros(*shape, config.head_dim, dtype=self.dtype, device=device)
        # [num_layers, 2, num_blocks, block_size, num_heads] row scales of an int8 cache, else None.
        self.scale = torch.zeros(shape, device=device) if self.dtype == torch.int8 else None

    def block_bytes(self) -> int:
        c = self.config
        row = c.head_dim * self.dtype.itemsize + (4 if self.dtype == torch.int8 else 0)
        return 2 * c.num_layers * self.block_size * c.num_heads * row

    def _num_blocks(self, cache: CacheConfig, max_num_seqs: int) -> int:
        """cache.num_kv_blocks, else as many blocks as the byte budget holds (the given
        kv_cache_memory_bytes, else a fraction of free memory), capped at max_num_seqs full contexts."""
        budget = cache.kv_cache_memory_bytes
        if budget is not None and budget < self.block_bytes() * (cache.num_kv_blocks or 1):
            need = f"{cache.num_kv_blocks} blocks of" if cache.num_kv_blocks else "one block:"
            raise ValueError(f"kv_cache_memory_bytes={budget} is too small for {need} "
                             f"{self.block_bytes()} bytes each")
        if cache.num_kv_blocks:
            return cache.num_kv_blocks
        if budget is None and self.device.type == "cuda":
            budget = torch.cuda.mem_get_info(self.device)[0] * CUDA_KV_MEMORY_FRACTION
        elif budget is None:
            budget = min(psutil.virtual_memory().available * CPU_KV_MEMORY_FRACTION, CPU_KV_MEMORY_CAP)
        useful = max_num_seqs * -(-self.config.max_position_embeddings // self.block_size)
        return max(1, min(int(budget // self.block_bytes()), useful))

    def bind(self, layers) -> None:
        """Give each layer's attention its views of the cache (and of the scales)."""
        for i, layer in enumerate(layers):
            scales = (None, None) if self.scale is None else (self.scale[i, 0], self.scale[i, 1])
            layer.attn.attn.bind_cache(self.kv[i, 0], self.kv[i, 1], *scales)

    def copy_blocks(self, block_copies: list[tuple[int, int]]) -> None:
        """Copy-on-write of blocks shared by forked samples: (src, dst) in every layer."""
        for src, dst in block_copies:
            self.kv[:, :, dst] = self.kv[:, :, src]
            if self.scale is not None:
                self.scale[:, :, dst] = self.scale[:, :, src]
