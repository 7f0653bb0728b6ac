"""LLMEngine: requests in, RequestOutputs out. step() = schedule -> execute -> update."""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch

from engine import codeclm
from engine.config import CacheConfig, load_config
from engine.core.block_manager import BlockManager
from engine.core.outputs import CompletionOutput, RequestOutput
from engine.core.sampling_params import SamplingParams
from engine.core.scheduler import Scheduler, SchedulerOutput
from engine.core.sequence import Request, Sequence, SequenceStatus
from engine.tokenizer import IncrementalDetokenizer, Tokenizer
from engine.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = "codegen-tiny-py"
# "int8": int8 linear weights and per-token int8 GEMM inputs, bfloat16 elsewhere (engine/layers/quant.py).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "int8": torch.int8}


def default_model_dir() -> Path:
    return ASSETS / DEFAULT_MODEL


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16  # AMX / tensor cores; CPUs without bf16 still run it correctly
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    if dtype == "float16" and device.type == "cpu":
        raise ValueError("dtype 'float16' is for CUDA; on the CPU use 'bfloat16' or 'float32'")
    return DTYPES[dtype]


class LLMEngine:
    def __init__(self, model: str | None = None, dtype: str = "auto", device: str = "auto",
                 attention_backend: str = "auto", block_size: int = 16,
                 num_kv_blocks: int | None = None, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 2048, enable_prefix_caching: bool = True,
                 seed: int = 0, kv_cache_dtype: str = "auto", kv_cache_memory_bytes: int | None = None,
                 num_threads: int | None = None):
        for name, value, low in (("block_size", block_size, 1), ("max_num_seqs", max_num_seqs, 1),
                                 ("max_num_batched_tokens", max_num_batched_tokens, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value in (("num_kv_blocks", num_kv_blocks), ("kv_cache_memory_bytes", kv_cache_memory_bytes),
                            ("num_threads", num_threads)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        self.num_threads = num_threads
        self.use_threads()
        model_dir = Path(model) if model is not None else default_model_dir()
        self.config = load_config(model_dir)
        self.model_name = model_dir.resolve().name
        self.tokenizer = Tokenizer(model_dir, self.config.eos_token_id)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        cache = CacheConfig(block_size, num_kv_blocks, kv_cache_dtype, kv_cache_memory_bytes)
        self.runner = ModelRunner(self.config, model_dir, self.dtype, self.device, attention_backend,
                                  cache, max_num_seqs,
                                  sample_vocab_size=min(len(self.tokenizer), self.config.vocab_size))
        self.block_manager = BlockManager(self.runner.num_kv_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.requests: dict[str, Request] = {}
        self.seed = seed
        self._counter = itertools.count()
        self._seq_ids = itertools.count()
        self.generated_modality = 0  # ids the model emits are looked up as text tokens
        self.codeclm = codeclm.detect(model_dir, self.tokenizer, self.config.vocab_size)
        if self.codeclm is not None:  # modality-separated vocabulary: see engine/codeclm.py
            self.runner.remap = self.codeclm.remap.to(self.device)
            self.runner.logits_mask |= self.codeclm.text_twin_mask  # emit twins, not text ids
            self.generated_modality = 1  # generated tokens are code
            if self.codeclm.eot_token_id is not None:  # the authors generate up to <eot>
                self.tokenizer.eos_token_id = self.codeclm.eot_token_id

    def use_threads(self) -> None:
        """Apply num_threads to the calling thread: OpenMP's thread count is a per-thread setting,
        so a thread that runs steps (AsyncLLM's engine thread) calls this first. None keeps the
        default (one per core, or OMP_NUM_THREADS)."""
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)

    # ---------------------------------------------------------------- requests
    def tokenize(self, prompt, sampling_params: SamplingParams | None = None,
                 release_gil: bool = False) -> dict:
        """Check and tokenise a prompt: {"prompt_token_ids", "modality", "prompt"} ("prompt" is
        its text, None for token ids), a form add_request takes without tokenising again.

        Reads only the tokenizer and the config, so any thread may call it (AsyncLLM does, off
        the engine thread, with release_gil). Raises ValueError when the prompt cannot fit the
        context with max_tokens; a text of N characters has at least ceil(N / L) tokens (L: the
        most characters one token covers), so a text too long for that is refused untokenised."""
        params = self._sampling_params(sampling_params)
        text, ids, mods = self._tokenize(prompt, params, release_gil)
        if not ids:
            raise ValueError("prompt must not be empty")
        self._check_fits(len(ids), params)
        return {"prompt_token_ids": ids, "modality": mods, "prompt": text}

    @staticmethod
    def _sampling_params(sampling_params) -> SamplingParams:
        params = sampling_params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        return params

    def _check_fits(self, num_tokens: int, params: SamplingParams | None,
                    num_chars: int | None = None) -> None:
        """ValueError when a prompt of num_tokens (or more) leaves no room for max_tokens."""
        limit, max_tokens = self.config.max_position_embeddings, params.max_tokens if params else 0
        if num_tokens + max_tokens <= limit:
            return
        size = (f"{num_tokens} tokens" if num_chars is None
                else f"{num_chars} characters, so at least {num_tokens} tokens")
        raise ValueError(f"prompt ({size}) + max_tokens ({max_tokens}) exceeds the "
                         f"model's context of {limit} tokens")

    def _tokenize(self, prompt, params: SamplingParams | None = None,
                  release_gil: bool = False) -> tuple[str | None, list[int], list[int]]:
        if isinstance(prompt, str):
            self._check_fits(self.tokenizer.min_num_tokens(prompt), params, len(prompt))
            ids = self.tokenizer.encode(prompt, "prompt", release_gil)
            return prompt, ids, [0] * len(ids)
        text = None
        if isinstance(prompt, dict):
            if "segments" in prompt:
                return self._tokenize_segments(prompt["segments"], params, release_gil)
            ids, mods = prompt.get("prompt_token_ids"), prompt.get("modality")
            text = prompt.get("prompt")
            if text is not None and not isinstance(text, str):
                raise ValueError("a prompt dict's \"prompt\" (its text) must be a string")
        else:
            ids, mods = prompt, None
        if not isinstance(ids, (list, tuple)):
            raise ValueError("prompt_token_ids must be a list of integers")
        self._check_fits(len(ids), params)  # first: the per-id checks below are slow on a huge list
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError("prompt_token_ids must be a list of integers")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids contain ids outside [0, {self.config.vocab_size}): {bad[:5]}")
        if mods is None:
            mods = [0] * len(ids)
        if len(mods) != len(ids) or any(m not in (0, 1) for m in mods):
            raise ValueError("modality must be a list of 0 (text) / 1 (code), one per prompt token")
        return text, list(ids), list(mods)

    def _tokenize_segments(self, segments, params: SamplingParams | None,
                           release_gil: bool) -> tuple[str, list[int], list[int]]:
        for seg in segments:
            if not (isinstance(seg, (list, tuple)) and len(seg) == 2 and seg[0] in ("code", "text")
                    and isinstance(seg[1], str)):
                raise ValueError(f"segments must be (\"code\" | \"text\", str) pairs, got {seg!r}")
        self._check_fits(sum(self.tokenizer.min_num_tokens(seg[1]) for seg in segments), params,
                         sum(len(seg[1]) for seg in segments))
        ids, mods, text = [], [], ""
        for i, (modality, seg_text) in enumerate(segments):
            seg_ids = self.tokenizer.encode(seg_text, f"prompt segment {i}", release_gil)
            ids += seg_ids
            mods += [int(modality == "code")] * len(seg_ids)
            text += seg_text
        return text, ids, mods

    def add_request(self, request_id: str, prompt, sampling_params: SamplingParams | None = None) -> None:
        """Queue a prompt (any form `tokenize` takes, or what it returned); ValueError when it
        or its parameters are invalid or cannot fit."""
        params = self._sampling_params(sampling_params)
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        tokens = self.tokenize(prompt, params)
        text, ids, mods = tokens["prompt"], tokens["prompt_token_ids"], tokens["modality"]
        need = self.block_manager.blocks_needed(len(ids) + params.max_tokens) + params.n - 1
        if need > self.block_manager.num_blocks:
            raise ValueError(f"prompt + max_tokens needs {need} KV blocks, the cache has "
                             f"{self.block_manager.num_blocks} (raise num_kv_blocks)")
        request = Request(request_id, text, ids, mods, params, next(self._counter))
        base_seed = params.seed if params.seed is not None else hash((self.seed, request.arrival_index))
        for i in range(params.n):
            seq = Sequence(next(self._seq_ids), request, i)
            seq.generator = torch.Generator().manual_seed((base_seed + i) % (2 ** 63))
            seq.detokenizer = (IncrementalDetokenizer(self.tokenizer, ids) if self.codeclm is None
                               else self.codeclm.detokenizer(self.tokenizer))
            request.seqs.append(seq)
        self.requests[request_id] = request
        self.scheduler.add(request)

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            self.scheduler.abort(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---------------------------------------------------------------- the loop
    def step(self) -> list[RequestOutput]:
        """One engine step. A request that makes it fail (in the forward pass, the sampler or
        its own update) is aborted and answered with an output whose `error` is set; the other
        requests go on exactly as without it."""
        sched = self.scheduler.schedule()
        if sched.empty:
            return []
        seqs, result, failed = self.runner.execute(sched)
        return self._update(sched, seqs, result, failed)

    def _update(self, sched: SchedulerOutput, seqs: list[Sequence], result,
                failed: dict[str, Exception]) -> list[RequestOutput]:
        touched: dict[str, Request] = {}
        for item in sched.scheduled:
            if item.seq.request.request_id in failed:
                continue  # aborted below: its state must not advance
            item.seq.num_computed_tokens += item.num_new_tokens
            for child in item.forks:
                child.num_computed_tokens = item.seq.num_computed_tokens
            self.block_manager.register_full_blocks(item.seq)
            touched[item.seq.request.request_id] = item.seq.request
        for row, seq in enumerate(seqs):
            rid = seq.request.request_id
            if rid in failed:  # another sample of the request failed before this one
                continue
            try:
                self._append_token(seq, result.token_ids[row], result.logprobs[row],
                                   result.top_logprobs[row])
            except Exception as error:  # e.g. its detokenizer: costs this request only
                failed[rid] = error
        outputs = [self._fail_request(rid, error) for rid, error in failed.items()]
        for rid, request in touched.items():
            if rid not in self.requests:
                continue
            outputs.append(self._request_output(request))
            if request.finished:
                del self.requests[rid]
        return outputs

    def _fail_request(self, request_id: str, error: Exception) -> RequestOutput:
        """Abort a request that made the step fail; its final output carries the error."""
        logger.error("request %s failed", request_id, exc_info=error)
        request = self.requests[request_id]
        self.abort_request(request_id)
        output = self._request_output(request)
        output.error = f"{type(error).__name__}: {error}"
        return output

    def _append_token(self, seq: Sequence, token: int, logprob: float, top) -> None:
        params = seq.request.params
        seq.token_ids.append(token)
        seq.modality.append(self.generated_modality)
        seq.cumulative_logprob += logprob
        if seq.logprobs is not None:
            seq.logprobs.append(top)
        reason = None
        if token == self.tokenizer.eos_token_id and not params.ignore_eos:
            reason = "stop"
        elif params.stop_token_ids and token in params.stop_token_ids:
            reason = "stop"
        else:
            old_len = len(seq.text)
            seq.text += seq.detokenizer.add(token)
            if params.stop_strings and self._truncate_at_stop(seq, old_len):
                reason = "stop"
        if reason is None and seq.num_output_tokens >= params.max_tokens:
            reason = "length"
        if reason is not None:
            seq.finish_reason = reason
            self.scheduler.finish(seq)

    @staticmethod
    def _truncate_at_stop(seq: Sequence, old_len: int) -> bool:
        stops = seq.request.params.stop_strings
        start = max(0, old_len - max(len(s) for s in stops) + 1)
        hits = [i for i in (seq.text.find(s, start) for s in stops) if i >= 0]
        if not hits:
            return False
        seq.text = seq.text[:min(hits)]
        return True

    def _request_output(self, request: Request) -> RequestOutput:
        completions = []
        hold = max((len(s) for s in request.params.stop_strings), default=1) - 1
        for seq in request.seqs:
            text = seq.text
            if not seq.finished and hold:
                text = text[:max(0, len(text) - hold)]  # could still become a stop string
            completions.append(CompletionOutput(
                seq.index, text, list(seq.output_token_ids), seq.finish_reason,
                list(seq.logprobs) if seq.logprobs is not None else None, seq.cumulative_logprob))
        return RequestOutput(request.request_id, request.prompt, list(request.prompt_token_ids),
                             completions, request.finished)

    def get_stats(self) -> dict:
        bm = self.block_manager
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "num_total_blocks": bm.num_blocks,
            "num_free_blocks": bm.num_free_blocks,
            "num_used_blocks": bm.num_blocks - bm.num_free_blocks,
            "prefix_cache_queries": bm.prefix_queries,
            "prefix_cache_hits": bm.prefix_hits,
            "num_preemptions": self.scheduler.num_preemptions,
        }
