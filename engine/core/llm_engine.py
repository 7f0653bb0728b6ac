"""LLMEngine: requests in, RequestOutputs out. step() = schedule -> execute -> update.

The input processor checks and tokenises prompts before the core sees them; the scheduler settles
each step (update_from_output); the output processor detokenises, applies stop strings and makes
the RequestOutputs."""
from __future__ import annotations

import logging
import os
import time

import torch

from ..codeclm import CodeCLMVocab
from ..config import CacheConfig
from .block_manager import BlockManager
# default_model_dir stays importable from here, where callers have always found it.
from .frontend import EngineFrontend, default_model_dir  # noqa: F401
from .input_processor import check_sampling_params
from .output_processor import OutputProcessor
from .outputs import RequestOutput
from .sampling_params import SamplingParams
from .sched_output import ModelRunnerOutput, SchedulerOutput
from .scheduler import Scheduler
from .sequence import Request
from .spec_decode import SpecDecoder
from ..engine_args import DEFAULT_MODEL, EngineArgs
from ..vocab import Vocabulary
from ..worker.cpu_threads import ThreadGovernor
from ..worker.model_runner import ModelRunner, resolve_device, resolve_dtype
from ..worker.ngram_proposer import NgramProposer

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, model: str | None = None, *, vocab: Vocabulary | None = None, **options):
        """options: the other fields of EngineArgs (engine/engine_args.py). vocab: the checkpoint's
        vocabulary (None: read from the checkpoint; CodeCLM's modality-separated one is found there)."""
        start = time.perf_counter()
        args = EngineArgs(model=model, **options)
        self.device = resolve_device(args.device)
        self.threads = self._thread_governor(args)
        self.use_threads()
        front = EngineFrontend.load(args, vocab)
        model_dir, self.model_name, self.config = front.model_dir, front.model_name, front.config
        self.max_model_len, self.served_model_names = front.max_model_len, front.served_model_names
        tokenizer = self.tokenizer = front.tokenizer
        self.vocab = front.vocab
        self.dtype = resolve_dtype(args.dtype, self.device, self.config)
        cache = CacheConfig(args.block_size, args.num_kv_blocks, args.kv_cache_dtype,
                            args.kv_cache_memory_bytes, self.max_model_len)
        self.runner = ModelRunner(self.config, model_dir, self.dtype, self.device, args.attention_backend,
                                  cache, args.max_num_seqs, self.vocab,
                                  sample_vocab_size=min(len(tokenizer), self.config.vocab_size),
                                  weights_cache=args.prepared_weights_cache)
        self.block_manager = BlockManager(self.runner.num_kv_blocks, args.block_size,
                                          args.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, args.max_num_seqs, args.max_num_batched_tokens,
                                   self.vocab.generated_modality, self._spec_decoder(args))
        self.input_processor = front.input_processor
        self.output_processor = OutputProcessor(tokenizer.eos_token_id, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self._log_summary(args, time.perf_counter() - start)

    def _thread_governor(self, args: EngineArgs) -> ThreadGovernor:
        """num_threads (default: torch's, one per core or OMP_NUM_THREADS) as the most threads;
        fitted to the free cores on the CPU unless dynamic_threads is off or the OpenMP workers
        spin while idle (OMP_WAIT_POLICY=active: they would count as other work)."""
        spinning = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "active"
        dynamic = args.dynamic_threads and self.device.type == "cpu" and not spinning
        return ThreadGovernor(args.num_threads or torch.get_num_threads(), dynamic)

    def _spec_decoder(self, args: EngineArgs) -> SpecDecoder | None:
        """Speculative decoding as speculative_config asks (prompt lookup), None when off."""
        config = args.speculative()
        if config is None:
            return None
        # A code-modality prompt token is drafted as the id the model emits for it (CodeCLM).
        remap = self.vocab.remap.tolist() if self.codeclm is not None else None
        proposer = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max, remap)
        return SpecDecoder(config, proposer, self.max_model_len)

    def _log_summary(self, args: EngineArgs, load_seconds: float) -> None:
        """One INFO line of what was built, with the choices "auto" made resolved."""
        def chosen(value, option: str) -> str:
            return f"{value} (auto)" if option == "auto" else str(value)

        kv_bytes = self.runner.num_kv_blocks * self.runner.block_bytes()
        backend = self.runner.ops.__name__.rsplit(".", 1)[-1].replace("reference", "torch")
        logger.info(
            "Loaded %s (%s) in %.2f s on %s%s: dtype %s, KV cache %s, %d blocks of %d tokens "
            "(%.2f GiB), max context %d tokens, threads %s, attention backend %s",
            args.model or DEFAULT_MODEL, self.config.architecture, load_seconds, self.device,
            "" if self.runner.weights_source == "checkpoint" else f" (prepared weights from {self.runner.weights_source})",
            chosen(self.runner.quant or str(self.dtype).removeprefix("torch."), args.dtype),
            chosen(str(self.runner.kv_dtype).removeprefix("torch."), args.kv_cache_dtype),
            self.runner.num_kv_blocks, args.block_size, kv_bytes / 2 ** 30,
            self.config.max_position_embeddings,
            f"1-{self.threads.max_threads} (dynamic)" if self.threads.dynamic else self.threads.max_threads,
            chosen(backend, args.attention_backend))

    @classmethod
    def from_engine_args(cls, args: EngineArgs, vocab: Vocabulary | None = None) -> LLMEngine:
        return cls(vocab=vocab, **args.to_dict())

    @property
    def codeclm(self) -> CodeCLMVocab | None:
        """The modality-separated vocabulary, None for an ordinary checkpoint."""
        return self.vocab if isinstance(self.vocab, CodeCLMVocab) else None

    @property
    def generated_modality(self) -> int:
        """Modality of the tokens the model emits: 0 text, 1 code (CodeCLM)."""
        return self.vocab.generated_modality

    @property
    def num_threads(self) -> int:
        """The most threads the kernels use (num_threads, or torch's default)."""
        return self.threads.max_threads

    def use_threads(self) -> None:
        """Apply the thread count to the calling thread: OpenMP's thread count is a per-thread
        setting, so a thread that runs steps (AsyncLLM's engine thread) calls this first; step()
        keeps it fitted to the free cores from then on."""
        self.threads.apply()

    # ---------------------------------------------------------------- requests
    def tokenize(self, prompt, sampling_params: SamplingParams | None = None,
                 release_gil: bool = False) -> dict:
        """InputProcessor.tokenize: any thread may call it (AsyncLLM does, off the engine thread)."""
        return self.input_processor.tokenize(prompt, sampling_params, release_gil)

    def _tokenize(self, prompt, release_gil: bool = False) -> tuple[str | None, list[int], list[int]]:
        return self.input_processor.split(prompt, release_gil)

    def add_request(self, request_id: str, prompt, sampling_params: SamplingParams | None = None) -> None:
        """Queue a prompt (any form `tokenize` takes, or what it returned); ValueError when it
        or its parameters are invalid or cannot fit."""
        params = check_sampling_params(sampling_params)
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        tokens = self.tokenize(prompt, params)
        # Generation stops at the context: a longer max_tokens needs no more blocks than that.
        num_tokens = min(len(tokens["prompt_token_ids"]) + params.max_tokens, self.max_model_len)
        self.scheduler.check_fits_cache(num_tokens, params.n)
        request = self.input_processor.make_request(request_id, tokens, params)
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
        self.threads.for_step(sched.num_tokens)
        output = self.runner.execute(sched)
        # The load is read after the forward pass and before its outputs wake a server's event
        # loop, so that the engine's own threads do not count as other work.
        self.threads.update()
        return self.update(sched, output)

    def update(self, sched: SchedulerOutput, output: ModelRunnerOutput) -> list[RequestOutput]:
        """The scheduler settles the step, the output processor its prompt logprobs; failed
        requests are aborted, the others answered."""
        for request_id, entries in output.prompt_logprobs.items():
            if request_id not in output.failed:
                self.output_processor.add_prompt_logprobs(self.requests[request_id], entries)
        advanced = self.scheduler.update_from_output(sched, output, self.output_processor.check_stop)
        outputs = [self._fail_request(rid, error) for rid, error in output.failed.items()]
        for request in advanced:
            if request.request_id not in self.requests:
                continue
            outputs.append(self.output_processor.request_output(request))
            if request.finished:
                del self.requests[request.request_id]
        return outputs

    def _fail_request(self, request_id: str, error: Exception) -> RequestOutput:
        """Abort a request that made the step fail; its final output carries the error."""
        logger.error("request %s failed", request_id, exc_info=error)
        request = self.requests[request_id]
        self.abort_request(request_id)
        return self.output_processor.request_output(request, error)

    def get_stats(self) -> dict:
        return {**self.scheduler.get_stats(), "num_cpu_threads": self.threads.threads}
