"""AsyncLLM: one LLMEngine driven by one EngineLoop, shared by many asyncio clients.

The engine is not thread-safe, so every engine call (add_request, abort_request, step, get_stats)
happens in the EngineLoop, on a thread of its own or in a process of its own (EngineProcess, so
that the HTTP work and the engine's steps do not share one GIL). Clients on the event loop talk to
it through commands and get outputs back through `loop.call_soon_threadsafe`:

    event loop                                   engine loop
    add_request() --("add", id, tokens, sp)-->   engine.add_request  --ack/err--> stream
      (engine.tokenize on a tokeniser thread first, so the engine thread only sees token ids)
    abort()       --("abort", id)----------->    engine.abort_request (before the next step)
    stream        <--[RequestOutput, ...]----    engine.step()  (while there is work)

Outputs are cumulative, so a stream keeps only the newest one: a slow reader skips intermediate
states instead of queueing them. All requests of all clients are batched by the one engine.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, AsyncIterator

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Too many requests are waiting for their first token; the client should retry later."""


class EngineClosed(RuntimeError):
    """The engine is shutting down and accepts no new requests (or aborted this one)."""


class EngineError(RuntimeError):
    """A request failed inside engine.step() and was aborted (the engine isolates the requests
    that fail; should step() itself raise, every request in the engine gets this error)."""


class EngineDead(EngineError):
    """The engine stopped on its own (its process died): this request and every later one fail
    (the server answers 503 and /health turns 503)."""


class RequestStream:
    """Newest cumulative RequestOutput of one request, plus its acceptance and error state."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop):
        self.request_id = request_id
        self.accepted: asyncio.Future = loop.create_future()
        self.arrival_time = time.monotonic()
        self.started = False          # produced at least one output (no longer waiting)
        self.finished = False         # the final output (or an error) has been delivered
        self._latest = None
        self._error: BaseException | None = None
        self._event = asyncio.Event()

    def put(self, output) -> None:
        self._latest = output
        self.started = True
        self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self.accepted.done():
            self.accepted.set_exception(error)
            self.accepted.exception()  # mark retrieved: add_request re-raises it
        self._error = error
        self._event.set()

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self):
        if self.finished:
            raise StopAsyncIteration
        await self._event.wait()
        self._event.clear()
        if self._error is not None:
            self.finished = True
            raise self._error
        output, self._latest = self._latest, None
        if output.finished:
            self.finished = True
        return output


class AsyncLLM:
    """Asyncio front end of one LLMEngine.

    `max_waiting` bounds the requests accepted but not yet producing output (queued or in
    prefill); beyond it `add_request` raises QueueFull. Call `start()` from the running loop
    and `await shutdown()` at the end.
    """

    def __init__(self, engine, max_waiting: int = 256):
        """engine: an LLMEngine (stepped on a thread of this process) or an EngineProcess."""
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.engine = engine
        self.max_waiting = max_waiting
        self._streams: dict[str, RequestStream] = {}   # touched only on the event loop
        self._stats: dict[str, Any] = dict(engine.get_stats())
        self._accepting = True
        # Tokenising a long prompt takes a while; here it holds up neither the engine's steps
        # nor the event loop. Two threads: a long prompt does not queue every short one behind it.
        self._tokenizers = ThreadPoolExecutor(max_workers=2,
                                              thread_name_prefix="codeinfer-tokenize")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core: EngineThread | None = None   # or the EngineProcess, once started
        self._error: str | None = None            # why the engine stopped on its own

    # ---------------------------------------------------------------- event-loop side

    def start(self) -> None:
        """Start the engine loop; call from inside the running event loop."""
        assert self._core is None, "AsyncLLM already started"
        self._loop = asyncio.get_running_loop()
        core = self.engine if hasattr(self.engine, "run_loop") else EngineThread(self.engine)
        core.run_loop(self._emit)
        self._core = core

    @property
    def error(self) -> str | None:
        """Why the engine stopped while serving (its process died), else None."""
        return self._error

    @property
    def stats(self) -> dict[str, Any]:
        """engine.get_stats() as of the end of the last engine iteration."""
        return self._stats

    @property
    def num_waiting(self) -> int:
        return sum(1 for s in self._streams.values() if not s.started)

    async def add_request(self, request_id: str, prompt, sampling_params) -> RequestStream:
        """Submit a request; returns its stream once the engine has accepted it.

        The prompt is checked and tokenised on a tokeniser thread (it counts as waiting
        meanwhile). Raises QueueFull, EngineClosed, or what engine.tokenize / add_request raised
        (ValueError for a bad prompt or parameters).
        """
        if self._error is not None:
            raise EngineDead(self._error)
        if not self._accepting or self._core is None:
            raise EngineClosed("the server is shutting down")
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if self.num_waiting >= self.max_waiting:
            raise QueueFull(f"{self.num_waiting} requests are already waiting")
        stream = RequestStream(request_id, self._loop)
        self._streams[request_id] = stream
        try:
            tokens = await self._loop.run_in_executor(self._tokenizers, partial(
                self.engine.tokenize, prompt, sampling_params, release_gil=True))
            if self._streams.get(request_id) is stream:  # else aborted meanwhile: accepted failed
                self._send(("add", request_id, tokens, sampling_params))
            await stream.accepted
        except asyncio.CancelledError:
            self.abort(request_id)
            raise
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        return stream

    async def generate(self, prompt, sampling_params, request_id: str) -> AsyncIterator:
        """Yield cumulative RequestOutputs until the request finishes.

        Leaving the loop early aborts the request once the generator is closed; use
        `contextlib.aclosing` to make that immediate.
        """
        stream = await self.add_request(request_id, prompt, sampling_params)
        try:
            async for output in stream:
                yield output
        finally:
            if not stream.finished:
                self.abort(request_id)

    def abort(self, request_id: str, error: EngineClosed | None = None) -> None:
        """Abort a request: the engine frees its blocks before its next step; its stream raises
        `error`. Unknown ids are a no-op."""
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return
        if not stream.finished:
            stream.fail(error or EngineClosed(f"request {request_id} was aborted"))
        self._send(("abort", request_id))

    async def shutdown(self, timeout: float = 0.0) -> None:
        """Stop accepting requests, let in-flight ones finish for up to `timeout` s, abort the
        rest and stop the engine thread."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for request_id in list(self._streams):
            self.abort(request_id, EngineClosed("the server shut down before the request finished"))
        self._tokenizers.shutdown(wait=False)  # what is queued runs, then finds its stream gone
        if self._core is not None:
            self._send(("stop",))
            if not await asyncio.to_thread(self._core.join, 30.0):
                logger.error("the engine loop did not stop within 30 s")

    def _send(self, command: tuple) -> None:
        if self._core is not None:
            self._core.send(command)

    def _emit(self, messages: list[tuple]) -> None:
        """From the engine loop (any thread): one iteration's (kind, *args) messages. Stats are
        taken at once, so that a reader of stats and outputs sees them agree."""
        for kind, *args in messages:
            if kind == "stats":
                self._stats = args[0]
            else:
                self._post(getattr(self, "_" + kind), *args)

    def _died(self, message: str) -> None:
        """The engine stopped on its own: every request fails, no new one is accepted."""
        logger.error("%s", message)
        self._error = message
        self._fail(list(self._streams), EngineDead(message))

    def _deliver(self, outputs: list) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            stream.put(output)
            if output.finished:
                del self._streams[output.request_id]

    def _accept(self, request_id: str, error: BaseException | None) -> None:
        stream = self._streams.get(request_id)
        if stream is None or stream.accepted.done():
            return
        if error is None:
            stream.accepted.set_result(None)
        else:
            stream.fail(error)

    def _fail(self, request_ids: list[str], error: BaseException) -> None:
        for request_id in request_ids:
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                stream.fail(error)

    def _post(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


class EngineThread:
    """Runs an EngineLoop on a daemon thread of this process: commands through a deque."""

    def __init__(self, engine):
        self.engine = engine
        self._commands: collections.deque = collections.deque()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None

    def run_loop(self, emit) -> None:
        loop = EngineLoop(self.engine, emit)
        self._thread = threading.Thread(target=loop.run, args=(self._receive,),
                                        name="codeinfer-engine", daemon=True)
        self._thread.start()

    def send(self, command: tuple) -> None:
        self._commands.append(command)
        self._wakeup.set()

    def join(self, timeout: float) -> bool:
        """True once the loop has stopped."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _receive(self, block: bool) -> list[tuple]:
        if block and not self._commands:
            self._wakeup.wait()
        self._wakeup.clear()
        commands = []
        while self._commands:
            commands.append(self._commands.popleft())
        return commands


class EngineLoop:
    """The engine side of AsyncLLM, wherever it runs: applies add / abort / stop commands, steps
    while there is work, and hands each iteration's messages to `emit` in one list:
    ("accept", id, error | None), ("fail", ids, error), ("stats", dict), ("deliver", outputs)."""

    def __init__(self, engine, emit):
        self.engine = engine
        self.emit = emit
        self.live: set[str] = set()   # ids the engine holds, as seen from the loop
        self._messages: list[tuple] = []

    def run(self, receive) -> None:
        """receive(block) -> the commands queued since the last call (block: wait for one)."""
        self.engine.use_threads()
        while True:
            if not self._apply(receive(not self.engine.has_unfinished_requests())):
                return
            outputs = self._step() if self.engine.has_unfinished_requests() else []
            try:  # refreshed before the outputs go out, so a reader of both sees them agree
                self._messages.append(("stats", dict(self.engine.get_stats())))
            except Exception:
                logger.exception("engine.get_stats() failed")
            if outputs:
                self._messages.append(("deliver", outputs))
            self._flush()

    def _flush(self) -> None:
        if self._messages:
            messages, self._messages = self._messages, []
            self.emit(messages)

    def _apply(self, commands: list[tuple]) -> bool:
        """Run add/abort commands on the engine; False when asked to stop."""
        for command in commands:
            if command[0] == "stop":
                for request_id in list(self.live):
                    self.engine.abort_request(request_id)
                self._flush()
                return False
            request_id = command[1]
            if command[0] == "abort":
                self.live.discard(request_id)
                self.engine.abort_request(request_id)
                continue
            try:
                self.engine.add_request(request_id, command[2], command[3])
            except Exception as error:  # a bad request must not stop the loop
                self._messages.append(("accept", request_id, error))
            else:
                self.live.add(request_id)
                self._messages.append(("accept", request_id, None))
        return True

    def _step(self) -> list:
        try:
            outputs = self.engine.step()
        except Exception as error:
            logger.exception("engine.step() failed; aborting %d requests", len(self.live))
            failed = list(self.live)
            for request_id in failed:
                try:
                    self.engine.abort_request(request_id)
                except Exception:
                    logger.exception("abort_request(%s) failed", request_id)
            self.live.clear()
            self._messages.append(("fail", failed, EngineError(f"engine step failed: {error}")))
            return []
        for output in outputs:
            if output.finished:
                self.live.discard(output.request_id)
            if output.error is not None:  # the engine isolated and aborted this request only
                self._messages.append(("fail", [output.request_id], EngineError(
                    f"engine step failed for this request: {output.error}")))
        return [output for output in outputs if output.error is None]
