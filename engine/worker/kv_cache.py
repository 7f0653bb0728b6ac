"""The paged KV cache: its element type, how many blocks it gets, one zeroed allocation, and the
per-layer views the attention layers read and write."""
from __future__ import annotations

import logging

import psutil
import torch

from .. import kernel_package
from ..config import CacheConfig, ModelConfig

logger = logging.getLogger(__name__)

# The default CPU cache (neither num_kv_blocks nor kv_cache_memory_bytes given) holds this many full
# contexts, or max_num_seqs if fewer: ~32 concurrent requests of half a context, about where CPU
# decode throughput stops growing (README, Performance: 8 -> 32 requests adds ~50%). More requests
# still run: when blocks run out the newest are preempted and recomputed. It takes at most
# CPU_KV_MEMORY_CAP bytes and CPU_KV_MEMORY_FRACTION of the available RAM, as the cache is zeroed
# (faulted in) at start-up, which takes time per GiB, and shares the machine with other work.
DEFAULT_CPU_CONTEXTS = 16
CPU_KV_MEMORY_FRACTION = 0.25
CPU_KV_MEMORY_CAP = 2 << 30
# On CUDA (a device of its own): max_num_seqs full contexts, within this fraction of the free
# device memory after loading the weights.
CUDA_KV_MEMORY_FRACTION = 0.85


def default_num_blocks(block_bytes: int, block_size: int, context_len: int, max_num_seqs: int,
                       free_bytes: int, on_gpu: bool = False) -> tuple[int, str]:
    """(KV-cache blocks, why) when the user gives neither num_kv_blocks nor kv_cache_memory_bytes:
    enough for DEFAULT_CPU_CONTEXTS full contexts of context_len tokens (on CUDA max_num_seqs; never
    more than max_num_seqs), within the memory budget of free_bytes (available RAM, or free device
    memory on CUDA), and never fewer than one full context, even past the budget."""
    per_context = -(-context_len // block_size)
    contexts = max_num_seqs if on_gpu else min(max_num_seqs, DEFAULT_CPU_CONTEXTS)
    if on_gpu:
        budget, limit = free_bytes * CUDA_KV_MEMORY_FRACTION, "85% of the free GPU memory"
    elif CPU_KV_MEMORY_CAP <= free_bytes * CPU_KV_MEMORY_FRACTION:
        budget, limit = CPU_KV_MEMORY_CAP, f"the CPU cap of {CPU_KV_MEMORY_CAP / (1 << 30):.2f} GiB"
    else:
        budget, limit = free_bytes * CPU_KV_MEMORY_FRACTION, "1/4 of the available memory"
    fit = int(budget // block_bytes)
    if contexts * per_context <= fit:
        bound = "max_num_seqs" if contexts == max_num_seqs else "the CPU default"
        return contexts * per_context, f"{contexts} full contexts of {context_len} tokens ({bound})"
    if fit >= per_context:
        return fit, f"{fit / per_context:.1f} full contexts of {context_len} tokens: {limit}"
    return per_context, f"one full context of {context_len} tokens, more than {limit}"


def resolve_kv_cache_dtype(name: str, dtype: torch.dtype, ops) -> torch.dtype:
    """KV-cache element type: "auto" = the activation dtype, "int8" = int8 rows with fp32 scales."""
    if name == "auto":
        return dtype
    if name != "int8":
        raise ValueError(f"kv_cache_dtype must be 'auto' or 'int8', got {name!r}")
    if ops.__name__ == f"{kernel_package.PACKAGE}.triton":
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
        """cache.num_kv_blocks, else as many blocks as kv_cache_memory_bytes holds (at most
        max_num_seqs full contexts), else default_num_blocks; logged with the reason."""
        budget, block_bytes = cache.kv_cache_memory_bytes, self.block_bytes()
        if budget is not None and budget < block_bytes * (cache.num_kv_blocks or 1):
            need = f"{cache.num_kv_blocks} blocks of" if cache.num_kv_blocks else "one block:"
            raise ValueError(f"kv_cache_memory_bytes={budget} is too small for {need} "
                             f"{block_bytes} bytes each")
        context_len = cache.max_model_len or self.config.max_position_embeddings
        if cache.num_kv_blocks:
            blocks, why = cache.num_kv_blocks, "num_kv_blocks"
        elif budget is not None:
            useful = max_num_seqs * -(-context_len // self.block_size)
            blocks, why = min(budget // block_bytes, useful), f"kv_cache_memory_bytes {budget}"
        elif self.device.type == "cuda":
            blocks, why = default_num_blocks(block_bytes, self.block_size, context_len, max_num_seqs,
                                             torch.cuda.mem_get_info(self.device)[0], on_gpu=True)
        else:
            blocks, why = default_num_blocks(block_bytes, self.block_size, context_len, max_num_seqs,
                                             psutil.virtual_memory().available)
        logger.info("KV cache: %d blocks of %d tokens, %.3f GiB: %s", blocks, self.block_size,
                    blocks * block_bytes / (1 << 30), why)
        return blocks

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
