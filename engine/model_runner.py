"""ModelRunner: owns the model, the KV cache and the attention backend; turns a SchedulerOutput
into one flat batch, runs the forward pass, and samples the rows that need a token."""
from __future__ import annotations

import logging
from pathlib import Path

import psutil
import torch

from engine.attention import AttentionMetadata
from engine.config import CacheConfig, ModelConfig
from engine.models.bf16 import pack_linears
from engine.models.quant import quantize_linears
from engine.sampler import SampleResult, sample
from engine.scheduler import ScheduledSeq, SchedulerOutput
from engine.weights import load_model, release_freed_memory

logger = logging.getLogger(__name__)

# Without num_kv_blocks, the CPU KV cache takes at most this fraction of the available RAM, and at
# most CPU_KV_MEMORY_CAP bytes: the cache is zeroed (faulted in) at start-up, ~0.2-0.8 s per GiB here.
CPU_KV_MEMORY_FRACTION = 0.25
CPU_KV_MEMORY_CAP = 2 << 30
# On CUDA, this fraction of the free device memory after loading the weights.
CUDA_KV_MEMORY_FRACTION = 0.85


def select_ops(name: str, device: torch.device):
    """The kernels module of an attention backend: "torch", "cpu", "triton" or "auto"."""
    if name == "auto":
        name = "triton" if device.type == "cuda" else "cpu"
    if name == "torch":
        from kernels import reference
        return reference
    if name == "cpu":
        if device.type != "cpu":
            raise ValueError(f"attention_backend 'cpu' runs the C++ CPU kernels; device is {device}")
        from kernels import cpu
        return cpu
    if name == "triton":
        try:
            from kernels import triton as triton_ops
        except ImportError as e:
            raise ValueError(f"attention_backend 'triton' needs the triton package: {e}") from None
        # Triton fixes interpreter-or-compiler mode when kernels.triton is first imported.
        if device.type != "cuda" and not triton_ops.INTERPRETED:
            raise ValueError("attention_backend 'triton' needs a CUDA device; on the CPU it runs "
                             "only under the Triton interpreter (TRITON_INTERPRET=1 set before "
                             "triton is imported)")
        return triton_ops
    raise ValueError(f"attention_backend must be 'auto', 'torch', 'cpu' or 'triton', got {name!r}")


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


class ModelRunner:
    def __init__(self, config: ModelConfig, model_dir: Path, dtype: torch.dtype,
                 device: torch.device, attention_backend: str, cache: CacheConfig,
                 max_num_seqs: int, sample_vocab_size: int):
        # dtype int8: int8 linear weights and GEMM inputs (engine/models/quant.py), the rest bfloat16.
        self.quant = "int8" if dtype == torch.int8 else None
        dtype = torch.bfloat16 if self.quant else dtype
        self.config, self.device, self.dtype, self.block_size = config, device, dtype, cache.block_size
        self.ops = select_ops(attention_backend, device)
        # int8: quantized block by block while loading; bf16 on the CPU: packed for the C++ GEMM
        # (engine/models/bf16.py). Then once more over the model for what is outside the blocks.
        prepare = quantize_linears if self.quant else None
        if not self.quant and dtype == torch.bfloat16 and device.type == "cpu":
            prepare = pack_linears
        self.model = load_model(config, model_dir, self.ops, dtype, device, prepare_block=prepare)
        if prepare is not None:
            prepare(self.model)
            release_freed_memory()
        # Ids >= sample_vocab_size exist in the embedding (padding rows) but are never sampled.
        self.sample_vocab_size = sample_vocab_size
        self.logits_mask = torch.zeros(config.vocab_size, dtype=torch.bool)
        self.logits_mask[sample_vocab_size:] = True
        self.remap = torch.arange(config.vocab_size, device=device)  # identity: plain lookup
        # kv_cache_dtype "int8": symmetric int8 rows, one fp32 scale per (slot, head) (C++ kernels).
        self.kv_dtype = resolve_kv_cache_dtype(cache.kv_cache_dtype, dtype, self.ops)
        self.num_kv_blocks = self._num_kv_blocks(cache, max_num_seqs)
        # [num_layers, 2, num_blocks, block_size, num_heads, head_dim]; layer l reads kv[l, 0/1].
        shape = (config.num_layers, 2, self.num_kv_blocks, cache.block_size, config.num_heads)
        # Zeroed, not just allocated: every page is faulted in now rather than by the step that first
        # writes a block (on the CPU ~40 us per fresh block inside a decode step, 4% of a run).
        self.kv_cache = torch.zeros(*shape, config.head_dim, dtype=self.kv_dtype, device=device)
        # [num_layers, 2, num_blocks, block_size, num_heads] row scales of an int8 cache, else None.
        self.kv_scale = torch.zeros(shape, device=device) if self.kv_dtype == torch.int8 else None
        for i, layer in enumerate(self.model.layers):
            attn = layer.attn.attn
            attn.k_cache, attn.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]
            if self.kv_scale is not None:
                attn.k_scale, attn.v_scale = self.kv_scale[i, 0], self.kv_scale[i, 1]

    def block_bytes(self) -> int:
        c = self.config
        row = c.head_dim * self.kv_dtype.itemsize + (4 if self.kv_dtype == torch.int8 else 0)
        return 2 * c.num_layers * self.block_size * c.num_heads * row

    def _num_kv_blocks(self, cache: CacheConfig, max_num_seqs: int) -> int:
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

    def _prepare(self, items: list[ScheduledSeq]):
        bs = self.block_size
        input_ids, modality, positions, slots = [], [], [], []
        cu_seqlens_q, seq_lens, tables = [0], [], []
        sample_rows, sample_seqs = [], []
        for item in items:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            input_ids += seq.token_ids[start:end]
            modality += seq.modality[start:end]
            positions += range(start, end)
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            cu_seqlens_q.append(cu_seqlens_q[-1] + item.num_new_tokens)
            seq_lens.append(end)
            tables.append(table)
            if item.sample:
                for s in [seq, *item.forks]:
                    sample_rows.append(cu_seqlens_q[-1] - 1)
                    sample_seqs.append(s)
        width = max(len(t) for t in tables)
        block_tables = torch.zeros(len(tables), width, dtype=torch.int32)
        for i, t in enumerate(tables):
            block_tables[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
        dev = self.device
        meta = AttentionMetadata(
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=block_tables.to(dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            cu_seqlens_q=torch.tensor(cu_seqlens_q, dtype=torch.int32, device=dev),
        )
        kept = {r: i for i, r in enumerate(sorted(set(sample_rows)))}  # forks share their parent's row
        if len(kept) < len(input_ids):
            # The last layer needs only these rows, each its sequence's last (kept_cu: 1 per sampler).
            kept_cu = [0]
            for b in range(len(seq_lens)):
                kept_cu.append(kept_cu[-1] + (cu_seqlens_q[b + 1] - 1 in kept))
            meta.last_rows = torch.tensor(list(kept), dtype=torch.int64, device=dev)
            meta.last_cu_seqlens_q = torch.tensor(kept_cu, dtype=torch.int32, device=dev)
            sample_rows = [kept[r] for r in sample_rows]
        ids = torch.tensor(input_ids, dtype=torch.int64, device=dev)
        mods = torch.tensor(modality, dtype=torch.int64, device=dev)
        return ids, mods, meta, sample_rows, sample_seqs

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> tuple[list, SampleResult, dict[str, Exception]]:
        """Run one step; returns (sequences that sampled, their samples in row order, failures).

        A request whose rows make the step raise is left out of the samples and reported in
        failures (request id -> error); the other requests get what a batch without it gives."""
        # Once, before any attempt: a re-run must not copy over a block that the failed one wrote.
        for src, dst in sched.block_copies:  # copy-on-write of blocks shared by forked samples
            self.kv_cache[:, :, dst] = self.kv_cache[:, :, src]
            if self.kv_scale is not None:
                self.kv_scale[:, :, dst] = self.kv_scale[:, :, src]
        return self._execute_isolating(sched.scheduled)

    def _execute_isolating(self, items: list[ScheduledSeq]):
        """Run items as one batch; if that raises, bisect by request until the requests that
        raise on their own are found. Re-running is safe: a failed attempt changed nothing but
        the KV slots of these tokens, which the next attempt writes again (the sampler draws only
        once nothing can fail)."""
        try:
            return *self._execute_batch(items), {}
        except Exception as exc:
            error = exc  # bisect outside the handler: each failure keeps its own traceback
        request_ids = list(dict.fromkeys(item.seq.request.request_id for item in items))
        if len(request_ids) == 1:
            return [], SampleResult([], [], []), {request_ids[0]: error}
        logger.warning("a step of %d requests failed (%s: %s); re-running them in halves",
                       len(request_ids), type(error).__name__, error)
        first = set(request_ids[:len(request_ids) // 2])
        seqs_a, result_a, failed_a = self._execute_isolating(
            [item for item in items if item.seq.request.request_id in first])
        seqs_b, result_b, failed_b = self._execute_isolating(
            [item for item in items if item.seq.request.request_id not in first])
        return seqs_a + seqs_b, result_a + result_b, {**failed_a, **failed_b}

    def _execute_batch(self, items: list[ScheduledSeq]) -> tuple[list, SampleResult]:
        ids, mods, meta, rows, seqs = self._prepare(items)
        hidden = self.model(ids, mods, self.remap, meta)
        if not rows:
            return [], SampleResult([], [], [])
        return seqs, sample(self.logits(hidden[rows]).cpu(), seqs)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] final hidden states -> [rows, sample_vocab_size] fp32 logits, ids that are
        never sampled (CodeCLM's text twins) at -inf; the padding rows beyond the tokenizer are cut."""
        logits = self.model.compute_logits(hidden)[:, :self.sample_vocab_size].float()
        mask = self.logits_mask[:self.sample_vocab_size]
        if mask.any():
            logits.masked_fill_(mask.to(logits.device), float("-inf"))
        return logits
