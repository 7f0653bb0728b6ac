"""InputProcessor: prompts in, Requests out. Checks and tokenises every prompt form the engine takes
(text, token ids, {"prompt_token_ids", "modality"}, {"segments"}) and refuses what cannot fit the
context or the KV cache, before the engine core sees it."""
from __future__ import annotations

import itertools

import torch

from ..config import ModelConfig
from .sampling_params import SamplingParams
from .sequence import Request, Sequence
from ..tokenizer import Tokenizer


def check_sampling_params(sampling_params) -> SamplingParams:
    params = sampling_params or SamplingParams()
    if not isinstance(params, SamplingParams):
        raise ValueError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
    return params


class InputProcessor:
    def __init__(self, config: ModelConfig, tokenizer: Tokenizer, vocab, seed: int,
                 max_model_len: int):
        """max_model_len: the context (EngineArgs.resolve_max_model_len), the longest prompt."""
        self.config, self.tokenizer, self.vocab, self.seed = config, tokenizer, vocab, seed
        self.max_model_len = max_model_len
        self._arrivals = itertools.count()
        self._seq_ids = itertools.count()

    def tokenize(self, prompt, sampling_params: SamplingParams | None = None,
                 release_gil: bool = False) -> dict:
        """Check and tokenise a prompt: {"prompt_token_ids", "modality", "prompt"} ("prompt" is
        its text, None for token ids), a form `make_request` takes without tokenising again.

        Reads only the tokenizer and the config, so any thread may call it (AsyncLLM does, off
        the engine thread, with release_gil). Raises ValueError when the prompt is longer than
        the context (max_tokens may reach past it: generation then stops there, with "length");
        a text of N characters has at least ceil(N / L) tokens (L: the most characters one token
        covers), so a text too long for that is refused untokenised."""
        check_sampling_params(sampling_params)
        text, ids, mods = self.split(prompt, release_gil)
        if not ids:
            raise ValueError("prompt must not be empty")
        self._check_fits(len(ids))
        return {"prompt_token_ids": ids, "modality": mods, "prompt": text}

    def _check_fits(self, num_tokens: int, num_chars: int | None = None) -> None:
        """ValueError when a prompt of num_tokens (or more) is longer than the context."""
        if num_tokens <= self.max_model_len:
            return
        size = (f"{num_tokens} tokens" if num_chars is None
                else f"{num_chars} characters, so at least {num_tokens} tokens")
        raise ValueError(f"prompt ({size}) is longer than the context of {self.max_model_len} "
                         f"tokens (max_model_len); a prompt that fits generates up to the context "
                         f"and finishes with \"length\"")

    def split(self, prompt, release_gil: bool = False) -> tuple[str | None, list[int], list[int]]:
        """(text or None, token ids, modality per token) of any prompt form."""
        if isinstance(prompt, str):
            self._check_fits(self.tokenizer.min_num_tokens(prompt), len(prompt))
            ids = self.tokenizer.encode(prompt, "prompt", release_gil)
            return prompt, ids, [0] * len(ids)
        text = None
        if isinstance(prompt, dict):
            if "segments" in prompt:
                return self._split_segments(prompt["segments"], release_gil)
            ids, mods = prompt.get("prompt_token_ids"), prompt.get("modality")
            text = prompt.get("prompt")
            if text is not None and not isinstance(text, str):
                raise ValueError("a prompt dict's \"prompt\" (its text) must be a string")
        else:
            ids, mods = prompt, None
        return text, *self._check_ids(ids, mods)

    def _check_ids(self, ids, mods) -> tuple[list[int], list[int]]:
        if not isinstance(ids, (list, tuple)):
            raise ValueError("prompt_token_ids must be a list of integers")
        self._check_fits(len(ids))  # first: the per-id checks below are slow on a huge list
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError("prompt_token_ids must be a list of integers")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids contain ids outside [0, {self.config.vocab_size}): {bad[:5]}")
        if mods is None:
            mods = [0] * len(ids)
        if len(mods) != len(ids) or any(m not in (0, 1) for m in mods):
            raise ValueError("modality must be a list of 0 (text) / 1 (code), one per prompt token")
        return list(ids), list(mods)

    def _split_segments(self, segments, release_gil: bool) -> tuple[str, list[int], list[int]]:
        for seg in segments:
            if not (isinstance(seg, (list, tuple)) and len(seg) == 2 and seg[0] in ("code", "text")
                    and isinstance(seg[1], str)):
                raise ValueError(f"segments must be (\"code\" | \"text\", str) pairs, got {seg!r}")
        self._check_fits(sum(self.tokenizer.min_num_tokens(seg[1]) for seg in segments),
                         sum(len(seg[1]) for seg in segments))
        ids, mods, text = [], [], ""
        for i, (modality, seg_text) in enumerate(segments):
            seg_ids = self.tokenizer.encode(seg_text, f"prompt segment {i}", release_gil)
            ids += seg_ids
            mods += [int(modality == "code")] * len(seg_ids)
            text += seg_text
        return text, ids, mods

    def make_request(self, request_id: str, tokens: dict, params: SamplingParams) -> Request:
        """A Request with its n sequences (seeded generators, detokenizers) from what `tokenize`
        returned."""
        text, ids, mods = tokens["prompt"], tokens["prompt_token_ids"], tokens["modality"]
        request = Request(request_id, text, ids, mods, params, next(self._arrivals))
        base_seed = params.seed if params.seed is not None else hash((self.seed, request.arrival_index))
        for i in range(params.n):
            seq = Sequence(next(self._seq_ids), request, i)
            seq.generator = torch.Generator().manual_seed((base_seed + i) % (2 ** 63))
            seq.detokenizer = self.vocab.detokenizer(self.tokenizer, ids)
            request.seqs.append(seq)
        return request
