"""The uvicorn server of `codeinfer serve`, which answers every request it stops at shutdown.

uvicorn's graceful shutdown waits for running requests up to its deadline, then cancels them,
which cuts their connections mid-stream; only then does the app's lifespan shut the engine down.
"""

from __future__ import annotations

import asyncio

import uvicorn


class DrainingServer(uvicorn.Server):
    """Drains the engine from the moment shutdown starts: requests still running after
    `drain_timeout` s are aborted in the engine, so each client gets an answer (a stream: an error
    event and `data: [DONE]`) before uvicorn's own deadline, which must come later."""

    def __init__(self, config: uvicorn.Config, async_llm, drain_timeout: float):
        deadline = config.timeout_graceful_shutdown  # None: uvicorn waits for ever
        if deadline is not None and deadline <= drain_timeout:
            raise ValueError(f"uvicorn's timeout_graceful_shutdown ({deadline} s) must exceed "
                             f"drain_timeout ({drain_timeout} s)")
        super().__init__(config)
        self.async_llm, self.drain_timeout = async_llm, drain_timeout

    async def shutdown(self, sockets=None) -> None:
        drain = asyncio.ensure_future(self.async_llm.shutdown(timeout=self.drain_timeout))
        try:
            await super().shutdown(sockets)
        finally:
            await drain
