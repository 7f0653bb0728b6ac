"""What the server logs, as vLLM does: one access line per request, and engine stats every
`interval` seconds while there is work.

    127.0.0.1:50412 "POST /v1/completions HTTP/1.1" 200 prompt_tokens=12 completion_tokens=16 latency=0.412s
    Avg prompt throughput: 40.1 tokens/s, Avg generation throughput: 52.3 tokens/s, Running: 2 reqs,
        Waiting: 0 reqs, KV cache usage: 1.2%, Prefix cache hit rate: 33.3%
"""

from __future__ import annotations

import asyncio
import logging
import time

STATS_INTERVAL_S = 10.0  # vLLM's

logger = logging.getLogger("codeinfer.server")
access_logger = logging.getLogger("codeinfer.access")


class AccessLogMiddleware:
    """Pure ASGI (streams pass through untouched). A handler that knows the request's token
    counts leaves `request.state.usage`, a callable returning OpenAI's usage dict; the line is
    written once the answer has been sent (a stream: its last event)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        state = scope.setdefault("state", {})  # what request.state reads and writes
        status = 500  # what the client sees if the app fails before answering

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            usage = state["usage"]() if callable(state.get("usage")) else {}
            client = scope.get("client")
            access_logger.info(
                '%s "%s %s HTTP/%s" %d prompt_tokens=%s completion_tokens=%s latency=%.3fs',
                f"{client[0]}:{client[1]}" if client else "-", scope["method"], scope["path"],
                scope.get("http_version", "1.1"), status, usage.get("prompt_tokens", "-"),
                usage.get("completion_tokens", "-"), time.monotonic() - start)


class StatLogger:
    """Every `interval` s, while requests run or wait (or tokens moved since the last line), one
    INFO line of throughput and engine state: prompt tokens are counted when their prefill is
    done, generated tokens as they are produced (the server's Prometheus counters)."""

    def __init__(self, async_llm, metrics, interval: float):
        self.async_llm, self.metrics, self.interval = async_llm, metrics, interval
        self._last = (time.monotonic(), *self._tokens())

    def _tokens(self) -> tuple[float, float]:
        sample = self.metrics.registry.get_sample_value
        return (sample("codeinfer_prompt_tokens_total") or 0.0,
                sample("codeinfer_generation_tokens_total") or 0.0)

    def log(self) -> None:
        now, (prompt, generated) = time.monotonic(), self._tokens()
        then, prompt_before, generated_before = self._last
        self._last = (now, prompt, generated)
        stats = self.async_llm.stats
        running, waiting = stats.get("num_running", 0), stats.get("num_waiting", 0)
        if not (running or waiting or prompt > prompt_before or generated > generated_before):
            return
        seconds = max(now - then, 1e-9)
        total, queries = stats.get("num_total_blocks", 0), stats.get("prefix_cache_queries", 0)
        logger.info(
            "Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
            "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%, Prefix cache hit rate: "
            "%.1f%%", (prompt - prompt_before) / seconds, (generated - generated_before) / seconds,
            running, waiting, 100 * stats.get("num_used_blocks", 0) / total if total else 0.0,
            100 * stats.get("prefix_cache_hits", 0) / queries if queries else 0.0)

    async def run(self) -> None:
        """Log every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.log()
            except Exception:  # a logging bug must not end the stats for good, or the server
                logger.exception("engine stats logging failed")
