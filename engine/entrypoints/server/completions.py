"""POST /v1/completions: submit one engine request per prompt, answer as JSON or as SSE chunks.

Choice i*n + j is sample j of prompt i (OpenAI's order). Engine outputs are cumulative; a stream
sends the new text of each choice. A client that leaves aborts its requests at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from functools import partial

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ...core.sampling_params import SamplingParams
from ..async_engine import EngineClosed, EngineDead, EngineError, QueueFull
from .metrics import ServerMetrics
from .models import ServedModels
from .protocol import APIError, CompletionRequest, error_body

logger = logging.getLogger(__name__)

# What a client learns of an unexpected failure; the exception itself goes to the server log.
INTERNAL_ERROR = "The server had an error while processing your request."


class _Choice:
    """What has been sent of one sequence, for deltas and latency metrics."""

    def __init__(self):
        self.num_text_chars = 0
        self.num_tokens = 0
        self.last_token_time = 0.0
        self.finish_reason = None


class _Tracker:
    """Per-request bookkeeping: cumulative outputs -> deltas, token counters and latencies."""

    def __init__(self, metrics: ServerMetrics, num_prompts: int, n: int):
        self.metrics = metrics
        self.n = n
        self.arrival = time.monotonic()
        self.first_token_seen = False
        self.choices = [_Choice() for _ in range(num_prompts * n)]
        self.outputs = [None] * num_prompts     # newest RequestOutput per prompt

    def update(self, prompt_index: int, output) -> list[tuple[int, object, int, int]]:
        """Record a new output; returns (choice index, completion, old tokens, old chars) per
        choice that changed."""
        now = time.monotonic()
        if self.outputs[prompt_index] is None:  # its first output: the prompt's prefill is done
            self.metrics.prompt_tokens.inc(len(output.prompt_token_ids))
        self.outputs[prompt_index] = output
        changed = []
        for completion in output.outputs:
            index = prompt_index * self.n + completion.index
            choice = self.choices[index]
            num_new = len(completion.token_ids) - choice.num_tokens
            if num_new <= 0 and completion.finish_reason == choice.finish_reason:
                continue
            if num_new > 0:
                if not self.first_token_seen:
                    self.first_token_seen = True
                    self.metrics.ttft.observe(now - self.arrival)
                elif choice.num_tokens > 0:
                    gap = (now - choice.last_token_time) / num_new
                    for _ in range(num_new):
                        self.metrics.itl.observe(gap)
                self.metrics.generation_tokens.inc(num_new)
                choice.last_token_time = now
            changed.append((index, completion, choice.num_tokens, choice.num_text_chars))
            choice.num_tokens = len(completion.token_ids)
            choice.num_text_chars = len(completion.text)
            if completion.finish_reason is not None and choice.finish_reason is None:
                choice.finish_reason = completion.finish_reason
                self.metrics.finished_sequences.labels(completion.finish_reason).inc()
        return changed

    def finish(self, outcome: str) -> None:
        self.metrics.requests.labels(outcome).inc()
        if outcome == "success":
            self.metrics.e2e.observe(time.monotonic() - self.arrival)
        elif outcome == "aborted":
            for choice in self.choices:
                if choice.finish_reason is None:
                    self.metrics.finished_sequences.labels("abort").inc()

    def usage(self) -> dict:
        prompt_tokens = sum(len(o.prompt_token_ids) for o in self.outputs if o is not None)
        completion_tokens = sum(c.num_tokens for c in self.choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}


class CompletionHandler:
    def __init__(self, async_llm, metrics: ServerMetrics, models: ServedModels):
        self.async_llm = async_llm
        self.metrics = metrics
        self.models = models
        self.tokenizer = async_llm.engine.tokenizer
        self.vocab_size = len(self.tokenizer)
        self._token_texts: dict[int, str] = {}

    async def create(self, req: CompletionRequest, raw_request: Request):
        model_name = self.models.check(req.model)
        prompts = req.prompts()
        if len(prompts) > self.async_llm.max_waiting:  # a 503 "retry later" would never succeed
            raise APIError(400, f"prompt has {len(prompts)} entries, more than the "
                           f"{self.async_llm.max_waiting} requests this server lets wait at once",
                           param="prompt")
        for prompt in prompts:
            if isinstance(prompt, list) and not all(0 <= t < self.vocab_size for t in prompt):
                raise APIError(400, f"token ids must be in [0, {self.vocab_size})", param="prompt")
        try:
            params = SamplingParams(**req.sampling_kwargs())
        except (ValueError, TypeError) as exc:
            field = str(exc).split(" ", 1)[0]
            raise APIError(400, str(exc), param=field if field in req.model_fields else None) from None

        request_id = f"cmpl-{uuid.uuid4().hex}"
        tracker = _Tracker(self.metrics, len(prompts), req.n or 1)
        raw_request.state.usage = tracker.usage  # for the access log, once the answer is sent
        ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        streams = await self._submit(ids, prompts, params)
        header = {"id": request_id, "object": "text_completion", "created": int(time.time()),
                  "model": model_name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            body = self._stream(req, header, ids, streams, tracker, include_usage)
            return _DisconnectAwareStreamingResponse(body, media_type="text/event-stream",
                                                     headers={"Cache-Control": "no-cache"})
        return await self._complete(req, header, ids, streams, tracker, raw_request)

    async def _submit(self, ids: list[str], prompts: list, params) -> list:
        """Add every prompt; on any failure abort the ones that got in and raise an APIError."""
        results = await asyncio.gather(
            *(self.async_llm.add_request(i, p, params) for i, p in zip(ids, prompts)),
            return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return results
        for request_id in ids:
            self.async_llm.abort(request_id)
        raise _api_error(errors[0])

    async def _merged(self, streams: list):
        """(prompt index, cumulative output) from all streams, in arrival order."""
        if len(streams) == 1:
            async for output in streams[0]:
                yield 0, output
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index, stream):
            try:
                async for output in stream:
                    queue.put_nowait((index, output, None))
            except Exception as exc:
                queue.put_nowait((index, None, exc))
            queue.put_nowait((index, None, None))

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
        try:
            remaining = len(streams)
            while remaining:
                index, output, error = await queue.get()
                if error is not None:
                    raise error
                if output is None:
                    remaining -= 1
                else:
                    yield index, output
        finally:
            for task in tasks:
                task.cancel()

    async def _complete(self, req, header, ids, streams, tracker, raw_request) -> JSONResponse:
        async def collect():
            async for index, output in self._merged(streams):
                tracker.update(index, output)

        collector = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(_wait_disconnect(raw_request))
        try:
            await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            disconnected = not collector.done()
            if disconnected:
                collector.cancel()
                for request_id in ids:
                    self.async_llm.abort(request_id)
        if disconnected:
            tracker.finish("aborted")
            return JSONResponse(error_body("client disconnected", "invalid_request_error"), 499)
        if collector.exception() is not None:
            for request_id in ids:  # the other prompts of this request have nobody to answer
                self.async_llm.abort(request_id)
            error = _api_error(collector.exception())
            tracker.finish("aborted" if isinstance(collector.exception(), EngineClosed) else "error")
            raise error
        choices = []
        for index, output in enumerate(tracker.outputs):
            for completion in output.outputs:
                choices.append({"index": index * tracker.n + completion.index,
                                **self._choice(req, output, completion, 0, 0, True)})
        choices.sort(key=lambda c: c["index"])
        tracker.finish("success")
        return JSONResponse({**header, "choices": choices, "usage": _usage(req, tracker)})

    async def _stream(self, req, header, ids, streams, tracker, include_usage: bool):
        done = False
        try:
            async for index, output in self._merged(streams):
                chunk_choices = []
                for choice_index, completion, old_tokens, old_chars in tracker.update(index, output):
                    first = old_tokens == 0 and old_chars == 0   # echo the prompt once, first
                    choice = self._choice(req, output, completion, old_tokens, old_chars, first)
                    logprobs = choice["logprobs"]
                    if choice["text"] or choice["finish_reason"] or (logprobs and logprobs["tokens"]):
                        chunk_choices.append({"index": choice_index, **choice})
                if chunk_choices:
                    yield _sse({**header, "choices": chunk_choices})
            if include_usage:
                yield _sse({**header, "choices": [], "usage": _usage(req, tracker)})
            done = True
            tracker.finish("success")
        except (EngineClosed, EngineError) as exc:
            done = True
            for request_id in ids:  # the other prompts of this request have nobody to answer
                self.async_llm.abort(request_id)
            tracker.finish("aborted" if isinstance(exc, EngineClosed) else "error")
            err = _api_error(exc)
            yield _sse(error_body(err.message, err.type, err.param, err.code))
        finally:
            if not done:  # the client left (cancelled) or the generator was closed early
                for request_id in ids:
                    self.async_llm.abort(request_id)
                tracker.finish("aborted")
        yield "data: [DONE]\n\n"

    def _choice(self, req, output, completion, old_tokens: int, old_chars: int, first: bool) -> dict:
        """The text, logprobs and finish reason of a choice from its old_tokens-th token and
        old_chars-th character on. With echo the prompt (and its logprobs) comes first, in the
        choice's first chunk (first), as OpenAI and vLLM answer; echo_only (max_tokens 0) returns
        no generated token: the one made to score the prompt is dropped."""
        text, pairs, offset = "", [], old_chars
        if req.echo and (first or req.logprobs is not None):
            ids = list(output.prompt_token_ids)
            prompt_text = output.prompt if isinstance(output.prompt, str) else self.tokenizer.decode(ids)
            if first:
                text, offset = prompt_text, 0
                pairs = list(zip(ids, output.prompt_logprobs or [None] * len(ids)))
            else:  # later text follows the echoed prompt
                offset += len(prompt_text)
        if not req.echo_only:
            text += completion.text[old_chars:]
            pairs += zip(completion.token_ids[old_tokens:], (completion.logprobs or [])[old_tokens:])
        logprobs = None if req.logprobs is None else self._logprobs(pairs, offset)
        return {"text": text, "logprobs": logprobs, "finish_reason": completion.finish_reason}

    def _logprobs(self, pairs: list[tuple[int, dict | None]], offset: int) -> dict:
        """OpenAI's legacy logprobs object for (token id, its {token id: logprob} entry or None:
        the first prompt token) pairs, the first token at text offset `offset`."""
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        for token_id, entry in pairs:
            text = self._token_text(token_id)
            tokens.append(text)
            token_logprobs.append(None if entry is None else _finite(entry.get(token_id)))
            top_logprobs.append(None if entry is None else
                                {self._token_text(t): _finite(lp) for t, lp in entry.items()})
            text_offset.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs,
                "top_logprobs": top_logprobs, "text_offset": text_offset}


    def _token_text(self, token_id: int) -> str:
        """A token as text; a piece of a UTF-8 character as "bytes:\\xe2\\x80" (OpenAI's spelling),
        so distinct partial tokens stay distinct keys of top_logprobs."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            raw = self.tokenizer.id_to_token(token_id)
            if "\ufffd" in text and raw is not None and all(c in _BYTE_DECODER for c in raw):
                text = "bytes:" + "".join(f"\\x{_BYTE_DECODER[c]:02x}" for c in raw)
            self._token_texts[token_id] = text
        return text


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-level alphabet (byte -> printable character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_DECODER = _byte_decoder()


class _DisconnectAwareStreamingResponse(StreamingResponse):
    """Streams while listening for http.disconnect, whatever ASGI spec version the server
    announces, so a client that leaves cancels the body iterator (which aborts its requests)."""

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as task_group:
            async def wrap(func) -> None:
                await func()
                task_group.cancel_scope.cancel()

            task_group.start_soon(wrap, partial(self.stream_response, send))
            await wrap(partial(self.listen_for_disconnect, receive))


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(req, tracker: _Tracker) -> dict:
    usage = tracker.usage()
    if req.echo_only:  # the token made to score the prompt is not returned
        usage.update(completion_tokens=0, total_tokens=usage["prompt_tokens"])
    return usage


def _finite(value):
    """JSON has no -inf: report it as the most negative finite float."""
    if value is None:
        return None
    value = float(value)
    return max(value, -9999.0) if value == value else None


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        return APIError(503, f"The server is overloaded ({exc}); retry later.", type="server_error",
                        code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, EngineClosed):
        return APIError(503, str(exc), type="server_error", code="shutting_down",
                        headers={"Retry-After": "5"})
    if isinstance(exc, EngineDead):
        return APIError(503, str(exc), type="server_error", code="engine_dead")
    if isinstance(exc, (ValueError, TypeError)):
        message = str(exc)
        code = "context_length_exceeded" if "context" in message.lower() else None
        return APIError(400, message, param="prompt" if message.startswith("prompt") else None,
                        code=code)
    logger.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return APIError(500, INTERNAL_ERROR, type="server_error")
