"""EngineReplica: the body of one Ray Serve replica, one engine (an AsyncLLM) each.

`generate` is a streaming method: the ingress iterates it through a DeploymentHandle. Its first
item says whether the engine accepted the request, then come the cumulative RequestOutputs as
the engine makes them (AsyncLLM keeps only the newest, so a slow reader skips states instead of
queueing them). Errors travel as items, not exceptions, so the ingress gets the engine's own
message and kind, not a Ray traceback:

    ("accepted", replica_id)    ("output", RequestOutput)    ("error", kind, message)

The ingress cancelling the call (its client left) cancels the generator here, which aborts the
request in the engine: its blocks are free before the next step.
"""

from __future__ import annotations

import asyncio
import os

from ...engine_args import EngineArgs
from ..async_engine import AsyncLLM, EngineClosed, EngineError, QueueFull
from .stats import STATS_PERIOD_S, board_name


def error_kind(exc: BaseException) -> str:
    """How the ingress re-raises an engine error (see client.raise_remote)."""
    if isinstance(exc, QueueFull):
        return "queue_full"
    if isinstance(exc, EngineClosed):
        return "closed"
    if isinstance(exc, (ValueError, TypeError)):
        return "invalid"
    return "engine"


class EngineReplica:
    async def __init__(self, engine_args: dict, max_waiting: int):
        from ray import serve

        from ...core.llm_engine import LLMEngine

        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self._board_name = board_name(context.app_name)
        # The model loads on a thread: the replica's event loop keeps answering Serve's
        # health checks meanwhile.
        engine = await asyncio.to_thread(LLMEngine.from_engine_args, EngineArgs(**engine_args))
        self.async_llm = AsyncLLM(engine, max_waiting=max_waiting)
        self.async_llm.start()
        self.num_aborted = 0
        self._stats_task = asyncio.ensure_future(self._publish_stats())

    async def generate(self, request_id: str, tokens: dict, sampling_params):
        try:
            stream = await self.async_llm.add_request(request_id, tokens, sampling_params)
        except Exception as exc:
            yield ("error", error_kind(exc), str(exc))
            return
        yield ("accepted", self.replica_id)
        try:
            async for output in stream:
                yield ("output", output)
        except (EngineClosed, EngineError) as exc:
            yield ("error", error_kind(exc), str(exc))
        finally:
            if not stream.finished:  # cancelled by the ingress: its client left
                self.num_aborted += 1
                self.async_llm.abort(request_id)

    def info(self) -> dict:
        return {"replica_id": self.replica_id, "pid": os.getpid()}

    def stats(self) -> dict:
        """The engine's stats and this replica's counters (what the ingress's /metrics shows)."""
        return {**self.async_llm.stats, "num_server_waiting": self.async_llm.num_waiting,
                "num_aborted": self.num_aborted,
                "pid": os.getpid()}

    async def _publish_stats(self) -> None:
        """Push stats to the ingress's board every STATS_PERIOD_S (also a heartbeat: a replica
        that stops pushing drops off /metrics)."""
        import ray

        board = None
        while True:
            try:
                if board is None:
                    board = ray.get_actor(self._board_name, namespace="serve")
                await board.put.remote(self.replica_id, self.stats())
            except Exception:  # the ingress (and its board) is not up yet, or restarting
                board = None
            await asyncio.sleep(STATS_PERIOD_S)

    async def __del__(self):
        self._stats_task.cancel()
        await self.async_llm.shutdown()
