"""Request bodies: a size limit enforced while they arrive, and JSON decoding that does not hold
up the other clients.

A JSON parser holds the GIL for as long as it works on one document: tens of milliseconds for a
prompt of megabytes, and no stream moves meanwhile. Bodies of INLINE_LIMIT bytes or more are
therefore decoded by a helper process (`python -I -S`, json and marshal only, started on first use)
and come back marshalled, which the server reads far faster than it would parse the JSON. marshal is safe here because its input is the helper's marshal.dumps of json.loads' output
(dicts, lists, str, int, float, bool, None), never bytes from a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import marshal
import struct
import sys

import pydantic_core
from fastapi import Request

from .protocol import APIError

logger = logging.getLogger(__name__)

INLINE_LIMIT = 1 << 20   # parsed in-process in a few ms
_HEADER = struct.Struct("<BQ")   # helper's answer: ok flag, payload length

# Reads [length u64][body] frames on stdin; answers [ok u8][length u64][marshal | error message].
_HELPER = r"""
import json, marshal, struct, sys
stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
while len(header := stdin.read(8)) == 8:
    raw = stdin.read(struct.unpack("<Q", header)[0])
    try:
        ok, payload = 1, marshal.dumps(json.loads(raw))
    except (ValueError, RecursionError) as exc:
        ok, payload = 0, str(exc).encode()
    stdout.write(struct.pack("<BQ", ok, len(payload)) + payload)
    stdout.flush()
"""


class BodyReader:
    """Reads and decodes JSON request bodies of at most `max_bytes` (413 beyond)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._helper: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()   # one body at a time through the helper's pipes

    async def json(self, request: Request):
        """The decoded body, read chunk by chunk: a body without Content-Length (chunked) is
        refused once `max_bytes` have arrived, never buffered whole. APIError 400 / 413."""
        # Connection: close, or uvicorn would go on reading (and dropping) the rest of the body.
        too_large = APIError(413, f"request body over {self.max_bytes} bytes",
                             headers={"Connection": "close"})
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise APIError(400, "bad Content-Length")
            if int(length) > self.max_bytes:
                raise too_large
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_bytes:
                raise too_large
        try:
            if len(raw) >= INLINE_LIMIT:
                return await self._decode_in_helper(raw)
            return _decode(raw)
        except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise APIError(400, f"malformed JSON body: {exc}") from None

    async def close(self) -> None:
        helper = self._helper
        self._kill()
        if helper is not None:
            await helper.wait()

    def _kill(self) -> None:
        """Drop the helper; asyncio reaps it and closes its pipes once it has exited."""
        if self._helper is not None and self._helper.returncode is None:
            self._helper.kill()
        self._helper = None

    async def _decode_in_helper(self, raw: bytearray):
        async with self._lock:
            try:
                helper = await self._start()
                helper.stdin.write(struct.pack("<Q", len(raw)))
                helper.stdin.write(raw)
                await helper.stdin.drain()
                ok, size = _HEADER.unpack(await helper.stdout.readexactly(_HEADER.size))
                payload = await helper.stdout.readexactly(size)
            except (OSError, asyncio.IncompleteReadError):
                logger.warning("the JSON helper process failed; decoding in-process",
                               exc_info=True)
                self._kill()
                return _decode(raw)
            except BaseException:  # cancelled mid-exchange: its answer would go to the next body
                self._kill()
                raise
        if not ok:
            raise ValueError(payload.decode(errors="replace"))
        return marshal.loads(payload)

    async def _start(self) -> asyncio.subprocess.Process:
        if self._helper is None or self._helper.returncode is not None:
            self._helper = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", "-c", _HELPER, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, limit=INLINE_LIMIT)
        return self._helper


def _decode(raw):
    """pydantic-core's parser is about three times faster than json.loads on a big prompt; a
    body it refuses goes to json.loads, the judge of what is valid (it reads lone surrogates,
    which are then refused naming their field), as the helper process does."""
    try:
        return pydantic_core.from_json(raw, cache_strings="keys")
    except ValueError:
        return json.loads(raw)
