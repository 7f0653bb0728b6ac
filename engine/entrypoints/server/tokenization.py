"""POST /tokenize and POST /detokenize with vLLM's shapes, through the served model's tokenizer.

Both take at most max_model_len tokens, the most one sequence of the model holds: a text that
must have more is refused before it is tokenised (engine/tokenizer.py's lower bound), and the
tokenising runs off the event loop, so a long text holds up no other client.
"""

from __future__ import annotations

import asyncio
from functools import partial

from .models import ServedModels
from .protocol import (APIError, DetokenizeRequest, DetokenizeResponse,
                                                TokenizeRequest, TokenizeResponse)


class TokenizationHandler:
    def __init__(self, tokenizer, models: ServedModels):
        self.tokenizer, self.models = tokenizer, models
        self.vocab_size = len(tokenizer)

    async def tokenize(self, req: TokenizeRequest) -> dict:
        self.models.check(req.model)
        limit = self.models.max_model_len
        at_least = self.tokenizer.min_num_tokens(req.prompt)
        if at_least > limit:
            raise _too_long(f"{len(req.prompt)} characters, so at least {at_least} tokens", limit)
        encode = partial(self.tokenizer.encode, req.prompt, "prompt", release_gil=True,
                         add_special_tokens=req.add_special_tokens)
        try:
            ids = await asyncio.to_thread(encode)
        except ValueError as exc:  # not valid Unicode
            raise APIError(400, str(exc), param="prompt") from None
        if len(ids) > limit:
            raise _too_long(f"{len(ids)} tokens", limit)
        strs = [self.tokenizer.id_to_token(i) for i in ids] if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=limit, tokens=ids,
                                token_strs=strs).model_dump(exclude_none=True)

    def detokenize(self, req: DetokenizeRequest) -> dict:
        self.models.check(req.model)
        if len(req.tokens) > self.models.max_model_len:
            raise APIError(400, f"tokens holds {len(req.tokens)} ids, more than the model's "
                           f"context of {self.models.max_model_len} tokens", param="tokens")
        bad = next((t for t in req.tokens if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token ids must be in [0, {self.vocab_size}), got {bad}",
                           param="tokens")
        # Special tokens are kept, so that detokenize(tokenize(text)) is the text (as vLLM does).
        text = self.tokenizer.decode(req.tokens, skip_special_tokens=False)
        return DetokenizeResponse(prompt=text).model_dump()


def _too_long(size: str, limit: int) -> APIError:
    return APIError(400, f"prompt ({size}) is longer than the model's context of {limit} tokens",
                    param="prompt", code="context_length_exceeded")
