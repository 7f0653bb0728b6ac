"""ModelRunner: owns the model, the KV cache and the attention backend; turns a SchedulerOutput
into one flat batch, runs the forward pass, and samples the rows that need a token."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from .. import kernel_package
from ..config import CacheConfig, ModelConfig
from ..core.sched_output import ModelRunnerOutput, ScheduledSeq, SchedulerOutput
from ..core.sequence import Request, Sequence
from ..layers.attention import AttentionMetadata
from ..layers.bf16 import pack_linears
from ..layers.int4 import quantize_linears_int4
from ..layers.quant import quantize_linears
from . import prepared_weights
from .kv_cache import KVCache
from .sampler import SampleResult, sample, token_logprobs, verify
from .weights import load_model, release_freed_memory

logger = logging.getLogger(__name__)

# Prompt logprobs make the logits of this many rows at a time ([256, 51200] fp32 is 52 MB).
PROMPT_LOGPROB_ROWS = 256


# "int8": int8 linear weights and per-token int8 GEMM inputs, bfloat16 elsewhere (engine/layers/quant.py).
# "int4": group-wise 4-bit linear weights, the same int8 GEMM inputs, an int8 lm_head (engine/layers/int4.py);
# torch has no 4-bit dtype, so torch.quint4x2 stands for the mode.
INT4 = torch.quint4x2
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "int8": torch.int8, "int4": INT4}
QUANT_MODES = {torch.int8: "int8", INT4: "int4"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return torch.device(device)


# "auto" on the CPU: int8 for models with at least this many linear weights. A decode step reads every
# weight once, so above ~50M weights a step is bound by those bytes and int8 halves them (~2x at one
# request); below, steps are bound by per-op overhead and bf16 is as fast at ~0.7 points better
# next-token agreement (README, "Quality").
AUTO_INT8_MIN_WEIGHTS = 50_000_000


def linear_weights(config) -> int:
    """Weights of the attention and MLP projections of every layer (what int8 quantises)."""
    hidden = config.hidden_size
    return config.num_layers * (4 * hidden * hidden + 2 * hidden * config.intermediate_size)


def resolve_dtype(dtype: str, device: torch.device, config=None) -> torch.dtype:
    """The torch dtype of a `dtype` option ("int8" is torch.int8: int8 linears, bf16 elsewhere).
    "auto": bfloat16 on GPUs; on the CPU int8 when the model's linear weights number at least
    AUTO_INT8_MIN_WEIGHTS (config given), else bfloat16."""
    if dtype == "auto":
        if device.type == "cpu" and config is not None and linear_weights(config) >= AUTO_INT8_MIN_WEIGHTS:
            return torch.int8
        return torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    if dtype == "int4" and device.type != "cpu":
        raise ValueError(f"dtype 'int4' runs the CPU int4 GEMM; device is {device} (use int8 or bfloat16)")
    if dtype == "float16" and device.type == "cpu":
        raise ValueError("dtype 'float16' is for CUDA; on the CPU use 'bfloat16' or 'float32'")
    return DTYPES[dtype]


def select_ops(name: str, device: torch.device):
    """The kernels module of an attention backend: "torch", "cpu", "triton" or "auto"."""
    if name == "auto":
        name = "triton" if device.type == "cuda" else "cpu"
    if name == "torch":
        return kernel_package.reference
    if name == "cpu":
        if device.type != "cpu":
            raise ValueError(f"attention_backend 'cpu' runs the C++ CPU kernels; device is {device}")
        return kernel_package.load("cpu")
    if name == "triton":
        try:
            triton_ops = kernel_package.load("triton")
        except ImportError as e:
            raise ValueError(f"attention_backend 'triton' needs the triton package: {e}") from None
        # Triton fixes interpreter-or-compiler mode when its kernels module is first imported.
        if device.type != "cuda" and not triton_ops.INTERPRETED:
            raise ValueError("attention_backend 'triton' needs a CUDA device; on the CPU it runs "
                             "only under the Triton interpreter (TRITON_INTERPRET=1 set before "
                             "triton is imported)")
        return triton_ops
    raise ValueError(f"attention_backend must be 'auto', 'torch', 'cpu' or 'triton', got {name!r}")


def prompt_logprob_positions(seq: Sequence, start: int, end: int) -> range:
    """The positions of seq's chunk [start, end) whose logits give prompt logprobs still missing."""
    needed_from = seq.request.prompt_logprobs_from
    if needed_from is None:
        return range(0)
    return range(max(start, needed_from), min(end, seq.num_prompt_tokens - 1))


@dataclass
class _Rows:
    """The rows of a step's last-layer output that give logits (indices into that output)."""
    sample: list[int]                 # per sampling sequence 1 + its drafts (forks share their parent's row)
    sample_seqs: list[Sequence]
    drafts: list[list[int]]           # per sampling sequence, the drafts its rows verify
    prompt: list[tuple[Request, list[int], list[int]]]  # (request, rows, prompt token of each row)


# The CPU path's linear replacements by mode, applied block by block while loading: int8 / int4
# quantise, bf16 packs for the C++ GEMM (engine/layers/quant.py, int4.py, bf16.py).
PREPARE = {"int8": quantize_linears, "int4": quantize_linears_int4, "bf16": pack_linears}


class ModelRunner:
    def __init__(self, config: ModelConfig, model_dir: Path, dtype: torch.dtype,
                 device: torch.device, attention_backend: str, cache: CacheConfig,
                 max_num_seqs: int, vocab, sample_vocab_size: int, weights_cache: bool = False):
        """vocab: the engine's Vocabulary (engine/vocab.py): the embedding row of each id in code
        modality and the ids never sampled. weights_cache: load the prepared CPU weights from their
        cache entry, and write one when there is none (engine/worker/prepared_weights.py)."""
        # dtype int8: int8 linear weights and GEMM inputs (engine/layers/quant.py), the rest bfloat16.
        self.quant = QUANT_MODES.get(dtype)
        dtype = torch.bfloat16 if self.quant else dtype
        self.config, self.device, self.dtype, self.block_size = config, device, dtype, cache.block_size
        self.ops = select_ops(attention_backend, device)
        # int8: quantized block by block while loading; bf16 on the CPU: packed for the C++ GEMM
        # (engine/layers/bf16.py). Then once more over the model for what is outside the blocks.
        # The packed linears run the backend's own int8_linear / bf16_linear (the reference ones
        # for "torch"); Triton has none (on the GPU the GEMMs stay on torch), so the C++ ones.
        linear_ops = self.ops if hasattr(self.ops, "int8_linear") else None
        mode = self.quant or ("bf16" if dtype == torch.bfloat16 and device.type == "cpu" else None)
        cached = mode is not None and weights_cache and linear_ops is not None and device.type == "cpu"
        self.model = prepared_weights.load(config, model_dir, mode, dtype, linear_ops, PREPARE[mode]) if cached else None
        # Where the weights came from, for the start-up summary: the checkpoint or the cache entry.
        self.weights_source = str(prepared_weights.entry_dir(model_dir, mode)) if self.model is not None else "checkpoint"
        if self.model is None:
            prepare = partial(PREPARE[mode], ops=linear_ops) if mode else None
            self.model = load_model(config, model_dir, self.ops, dtype, device, prepare_block=prepare)
            if prepare is not None:
                prepare(self.model)
                release_freed_memory()
                if cached:
                    prepared_weights.save(self.model, model_dir, mode)
        # Ids >= sample_vocab_size exist in the embedding (padding rows) but are never sampled.
        self.sample_vocab_size = sample_vocab_size
        # [sample_vocab_size] ids never sampled (CodeCLM: its twins are emitted, not text ids);
        # fixed for the engine's life, so whether to mask at all is decided once, not every step.
        self.sample_mask = vocab.sampling_mask[:sample_vocab_size].to(device)
        self.masked_logits = bool(self.sample_mask.any())
        # The sampler's per-row argmax and logsumexp (the C++ one on the CPU backend).
        self.row_stats = self.ops.argmax_logsumexp
        self.remap = vocab.remap.to(device)  # [vocab_size]: identity but for CodeCLM's twins
        self.generated_modality = vocab.generated_modality
        # kv_cache_dtype "int8": symmetric int8 rows, one fp32 scale per (slot, head) (C++ kernels).
        self.cache = KVCache(config, cache, dtype, device, self.ops, max_num_seqs)
        self.cache.bind(self.model.layers)
        self.kv_dtype, self.num_kv_blocks = self.cache.dtype, self.cache.num_blocks
        self.kv_cache, self.kv_scale = self.cache.kv, self.cache.scale
        self.block_bytes = self.cache.block_bytes

    def _prepare(self, items: list[ScheduledSeq]):
        bs = self.block_size
        input_ids, modality, positions, slots = [], [], [], []  # per token
        cu_seqlens_q, seq_lens, tables = [0], [], []
        for item in items:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            # Drafts (speculative decoding) follow the known tokens; they are generated tokens.
            input_ids += seq.token_ids[start:end] + item.draft_token_ids
            modality += seq.modality[start:end] + [self.generated_modality] * len(item.draft_token_ids)
            positions += range(start, end)
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            cu_seqlens_q.append(cu_seqlens_q[-1] + item.num_new_tokens)
            seq_lens.append(end)
            tables.append(table)
        width = max(len(t) for t in tables)
        num_tokens, num_seqs = len(input_ids), len(items)
        # Two tensors a step, split into views (a torch.tensor call costs more than its copy here):
        # int64 ids | modality | positions | slots, and int32 seq_lens | cu_seqlens_q | block tables.
        dev = self.device
        longs = torch.tensor(input_ids + modality + positions + slots, dtype=torch.int64, device=dev)
        ints = torch.tensor(seq_lens + cu_seqlens_q + [b for t in tables for b in t + [0] * (width - len(t))],
                            dtype=torch.int32, device=dev)
        ids, mods, positions_t, slots_t = longs.split(num_tokens)
        seq_lens_t, cu_t, flat_tables = ints.split([num_seqs, num_seqs + 1, num_seqs * width])
        meta = AttentionMetadata(positions=positions_t, slot_mapping=slots_t,
                                 block_tables=flat_tables.view(num_seqs, width), seq_lens=seq_lens_t,
                                 cu_seqlens_q=cu_t)
        rows = self._select_rows(items, cu_seqlens_q, meta)
        return ids, mods, meta, rows

    def _select_rows(self, items: list[ScheduledSeq], cu_seqlens_q: list[int],
                     meta: AttentionMetadata) -> _Rows:
        """The rows whose logits the step needs: each sampling sequence's last row, and the rows
        of prompt positions whose logits give prompt logprobs still missing. When those are
        fewer than all, meta.last_rows keeps only them through the last layer."""
        needed: list[list[int]] = []  # per sequence, ascending
        rows = _Rows([], [], [], [])
        for b, item in enumerate(items):
            seq, start = item.seq, item.seq.num_computed_tokens
            first_row, last_row = cu_seqlens_q[b], cu_seqlens_q[b + 1] - 1
            wanted = prompt_logprob_positions(seq, start, start + item.num_new_tokens)
            kept = [first_row + p - start for p in wanted]
            if kept:  # position p gives the logprob of token p + 1
                rows.prompt.append((seq.request, list(kept),
                                    seq.token_ids[wanted.start + 1:wanted.stop + 1]))
            if item.sample:
                # Verifying k drafts takes the chunk's last k + 1 rows (the drafts are its last inputs).
                rows_of_seq = range(last_row - len(item.draft_token_ids), last_row + 1)
                kept += [r for r in rows_of_seq if not kept or r > kept[-1]]
                for s in [seq, *item.forks]:  # forks share their parent's row
                    rows.sample += rows_of_seq
                    rows.sample_seqs.append(s)
                    rows.drafts.append(item.draft_token_ids)
            # The last layer's attention takes a sequence's kept rows as the last queries of its chunk.
            assert kept == list(range(last_row + 1 - len(kept), last_row + 1)), kept
            needed.append(kept)
        flat = [r for kept in needed for r in kept]
        if len(flat) < cu_seqlens_q[-1]:
            dev = self.device
            kept_cu = [0]
            for kept in needed:
                kept_cu.append(kept_cu[-1] + len(kept))
            meta.last_rows = torch.tensor(flat, dtype=torch.int64, device=dev)
            meta.last_cu_seqlens_q = torch.tensor(kept_cu, dtype=torch.int32, device=dev)
            index = {r: i for i, r in enumerate(flat)}
            rows.sample = [index[r] for r in rows.sample]
            rows.prompt = [(req, [index[r] for r in kept], targets) for req, kept, targets in rows.prompt]
        return rows

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Run one step: the sequences that sampled, their samples in row order, and failures.

        A request whose rows make the step raise is left out of the samples and reported in
        failures (request id -> error); the other requests get what a batch without it gives."""
        # Once, before any attempt: a re-run must not copy over a block that the failed one wrote.
        self.cache.copy_blocks(sched.block_copies)
        return self._execute_isolating(sched.scheduled)

    def _execute_isolating(self, items: list[ScheduledSeq]) -> ModelRunnerOutput:
        """Run items as one batch; if that raises, bisect by request until the requests that
        raise on their own are found. Re-running is safe: a failed attempt changed nothing but
        the KV slots of these tokens, which the next attempt writes again (the sampler draws only
        once nothing can fail)."""
        try:
            return self._execute_batch(items)
        except Exception as exc:
            error = exc  # bisect outside the handler: each failure keeps its own traceback
        request_ids = list(dict.fromkeys(item.seq.request.request_id for item in items))
        if len(request_ids) == 1:
            return ModelRunnerOutput([], SampleResult([], [], []), {request_ids[0]: error})
        logger.warning("a step of %d requests failed (%s: %s); re-running them in halves",
                       len(request_ids), type(error).__name__, error)
        first = set(request_ids[:len(request_ids) // 2])
        a = self._execute_isolating([item for item in items if item.seq.request.request_id in first])
        b = self._execute_isolating([item for item in items if item.seq.request.request_id not in first])
        return ModelRunnerOutput(a.seqs + b.seqs, a.sampled + b.sampled, {**a.failed, **b.failed},
                                 {**a.prompt_logprobs, **b.prompt_logprobs})

    def _execute_batch(self, items: list[ScheduledSeq]) -> ModelRunnerOutput:
        ids, mods, meta, rows = self._prepare(items)
        hidden = self.model(ids, mods, self.remap, meta)
        # Before the sampler: its draws must come after everything that can fail.
        prompt_logprobs = {request.request_id: self._prompt_logprobs(hidden[kept], targets,
                                                                     request.params.prompt_logprobs)
                           for request, kept, targets in rows.prompt}
        sampled, seqs = SampleResult([], [], []), rows.sample_seqs
        if any(rows.drafts):  # speculative decoding: several tokens for a sequence
            sampled, seqs = verify(self.logits(hidden[rows.sample]).cpu(), seqs, rows.drafts, self.row_stats)
        elif rows.sample:
            sampled = sample(self.logits(hidden[rows.sample]).cpu(), seqs, self.row_stats)
        return ModelRunnerOutput(seqs, sampled, {}, prompt_logprobs)

    def _prompt_logprobs(self, hidden: torch.Tensor, token_ids: list[int],
                         num_top: int) -> list[dict[int, float]]:
        """hidden: [rows, hidden] of prompt positions; token_ids: the prompt token each predicts.
        The logits are made a slice at a time: a long prompt's would not fit in memory at once."""
        entries = []
        for i in range(0, len(token_ids), PROMPT_LOGPROB_ROWS):
            logits = self.logits(hidden[i:i + PROMPT_LOGPROB_ROWS])
            ids = token_ids[i:i + PROMPT_LOGPROB_ROWS]
            entries += token_logprobs(logits, ids, [num_top] * len(ids))[1]
        return entries

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] final hidden states -> [rows, sample_vocab_size] fp32 logits, ids that are
        never sampled (CodeCLM's text twins) at -inf; the padding rows beyond the tokenizer are cut."""
        logits = self.model.compute_logits(hidden)[:, :self.sample_vocab_size].float()
        if self.masked_logits:
            logits.masked_fill_(self.sample_mask, float("-inf"))
        return logits
