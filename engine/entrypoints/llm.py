"""LLM: the offline, embedded API (vLLM's names)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from ..core.llm_engine import LLMEngine
from ..engine_args import EngineArgs
from ..core.outputs import RequestOutput
from ..core.sampling_params import SamplingParams


class LLM:
    """Load a checkpoint folder or Hub id (None = the bundled default model) and generate from
    prompts."""

    def __init__(self, model: str | None = None, **options):
        """options: the other fields of EngineArgs (engine/engine_args.py), checked there."""
        self.engine = LLMEngine.from_engine_args(EngineArgs(model=model, **options))
        self._next_id = 0

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts=None, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 prompt_token_ids: list[list[int]] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for every prompt; returns one RequestOutput per prompt, in order.

        prompts: a str, a list of str, or dict prompts ({"prompt_token_ids", "modality"} or
        {"segments"}); or prompt_token_ids: a list of token-id lists."""
        if prompts is not None and prompt_token_ids is not None:
            raise ValueError("pass prompts or prompt_token_ids, not both")
        if prompt_token_ids is not None:
            items = [list(ids) for ids in prompt_token_ids]
        elif isinstance(prompts, (str, dict)):
            items = [prompts]
        elif isinstance(prompts, (list, tuple)) and prompts:
            items = list(prompts)
        else:
            raise ValueError("prompts must be a string or a non-empty list of prompts")
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(items)
        else:
            params = list(sampling_params)
            if len(params) != len(items):
                raise ValueError(f"sampling_params has {len(params)} entries for {len(items)} prompts")
        ids = []
        try:  # validate everything before any work starts
            for item, p in zip(items, params):
                rid = f"gen-{self._next_id}"
                self._next_id += 1
                self.engine.add_request(rid, item, p)
                ids.append(rid)
        except (ValueError, TypeError):
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        return self._run(ids, use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Generating", unit="req",
                   disable=not (use_tqdm and sys.stderr.isatty()))
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.error is not None:
                        raise RuntimeError(f"request {out.request_id} failed: {out.error}")
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
        except BaseException:
            for rid in request_ids:
                self.engine.abort_request(rid)
            raise
        finally:
            bar.close()
        return [done[rid] for rid in request_ids]
