"""ReplicaClient: what the OpenAI app (build_app) drives when the engines are Ray Serve replicas.

It has AsyncLLM's surface (start, shutdown, add_request -> stream, abort, stats, num_waiting,
max_waiting, engine) so the app, its errors, metrics and streaming are the single-process
server's, unchanged. `engine` is an EngineFrontend: the tokenizer, config and served names of
the checkpoint, without its weights. Prompts are tokenised here, and the token ids go to the
replica (which is what the prefix-affinity router hashes).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from functools import partial

from ..async_engine import EngineClosed, EngineError, QueueFull
from .stats import STATS_PERIOD_S, summed

logger = logging.getLogger(__name__)


def raise_remote(kind: str, message: str):
    """Re-raise a replica's ("error", kind, message) item as the exception AsyncLLM raises."""
    errors = {"queue_full": QueueFull, "closed": EngineClosed, "invalid": ValueError}
    raise errors.get(kind, EngineError)(message)


class RemoteStream:
    """The cumulative RequestOutputs of one request, from a replica's generate stream. A replica
    that dies under it ends it with EngineError (the app answers a 5xx)."""

    def __init__(self, request_id: str, responses, on_finish):
        self.request_id = request_id
        self._on_finish = on_finish   # called once, when the stream ends in any way
        self.replica_id: str | None = None
        self.started = False      # produced at least one output
        self.finished = False
        self._responses = responses   # ray.serve.handle.DeploymentResponseGenerator
        self._error: BaseException | None = None

    async def accepted(self) -> None:
        """Wait for the replica's verdict; raises what its engine raised."""
        item = await self._next()
        if item[0] == "error":
            self._finish()
            raise_remote(item[1], item[2])
        self.replica_id = item[1]

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self):
        if self.finished:
            raise StopAsyncIteration
        item = await self._next()
        if item[0] == "error":
            self._finish()
            raise_remote(item[1], item[2])
        output = item[1]
        self.started = True
        if output.finished:
            self._finish()
        return output

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._on_finish()

    async def _next(self) -> tuple:
        try:
            return await self._responses.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise EngineError(f"replica {self.replica_id} ended request {self.request_id} "
                              f"without a final output") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the replica died or became unreachable (Ray's errors)
            self._finish()
            if self._error is not None:
                raise self._error from None
            logger.warning("request %s lost its replica %s: %s: %s", self.request_id,
                           self.replica_id, type(exc).__name__, exc)
            raise EngineError(f"the replica serving this request failed "
                              f"({type(exc).__name__})") from None

    def cancel(self, error: BaseException) -> None:
        """Abort: Serve cancels the replica's generator, which aborts the engine request."""
        if not self.finished:
            self._error = error
            self._finish()
            self._responses.cancel()


class ReplicaClient:
    def __init__(self, handle, frontend, max_waiting: int, board):
        """handle: the EngineReplica deployment's; board: the StatsBoard actor."""
        self.engine = frontend
        self.max_waiting = max_waiting
        self._generate = handle.options(stream=True).generate
        self._board = board
        self._streams: dict[str, RemoteStream] = {}
        self._accepting = True
        self._refresh: asyncio.Task | None = None
        self.replica_stats: dict[str, dict] = {}   # replica id -> its newest stats
        self.routed: collections.Counter = collections.Counter()  # replica id -> accepted
        self._stats: dict = {}

    def start(self) -> None:
        """Start reading the stats board; call from inside the running event loop."""
        self._refresh = asyncio.ensure_future(self._read_board())

    @property
    def stats(self) -> dict:
        """The engine stats of every live replica added up."""
        return self._stats

    @property
    def error(self) -> str | None:
        """AsyncLLM.error: Serve restarts a replica that dies, so the app stays up (None)."""
        return None

    @property
    def num_waiting(self) -> int:
        return sum(1 for s in self._streams.values() if not s.started)

    async def add_request(self, request_id: str, prompt, sampling_params) -> RemoteStream:
        """Tokenise here, submit to the replica the router picks, return once it accepted.
        Raises what AsyncLLM.add_request raises (the replica's QueueFull among them)."""
        if not self._accepting:
            raise EngineClosed("the server is shutting down")
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        tokens = await asyncio.get_running_loop().run_in_executor(None, partial(
            self.engine.tokenize, prompt, sampling_params, release_gil=True))
        responses = self._generate.remote(request_id, tokens, sampling_params)
        stream = RemoteStream(request_id, responses,
                              partial(self._streams.pop, request_id, None))
        self._streams[request_id] = stream
        try:
            await stream.accepted()
        except BaseException:
            stream.cancel(EngineClosed(f"request {request_id} was aborted"))
            raise
        self.routed[stream.replica_id] += 1
        return stream

    def abort(self, request_id: str, error: EngineClosed | None = None) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.cancel(error or EngineClosed(f"request {request_id} was aborted"))

    async def shutdown(self, timeout: float = 0.0) -> None:
        """Stop accepting, let in-flight requests run for up to `timeout` s, abort the rest."""
        self._accepting = False
        deadline = asyncio.get_running_loop().time() + timeout
        while self._streams and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for request_id in list(self._streams):
            self.abort(request_id, EngineClosed("the server shut down before the request finished"))
        if self._refresh is not None:
            self._refresh.cancel()

    async def _read_board(self) -> None:
        while True:
            try:
                self.replica_stats = await self._board.snapshot.remote()
                self._stats = summed(self.replica_stats)
            except Exception:  # never let metrics end the server; the next read may work
                logger.exception("reading the replicas' stats failed")
            await asyncio.sleep(STATS_PERIOD_S)
