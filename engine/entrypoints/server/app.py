"""The FastAPI application: routes, API-key check, and errors in OpenAI's JSON shape.

Every failure is answered, never raised into the server: bad input is a 400 naming the field,
anything unexpected a 500, and the engine thread survives both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import openapi
from .body import BodyReader
from .completions import INTERNAL_ERROR, CompletionHandler
from .logs import STATS_INTERVAL_S, AccessLogMiddleware, StatLogger
from .metrics import CONTENT_TYPE, ServerMetrics
from .models import ServedModels
from .protocol import (APIError, CompletionRequest, DetokenizeRequest,
                                                DetokenizeResponse, TokenizeRequest,
                                                TokenizeResponse, error_body, parse_body,
                                                parse_completion_request)
from .tokenization import TokenizationHandler
from ...version import __version__

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
# Paths that need the API key when there is one: the model's work (/health, /metrics, /version
# and the OpenAPI page stay open).
_KEYED_PATHS = ("/tokenize", "/detokenize")


def build_app(async_llm, api_key: str | None = None, shutdown_timeout: float = 0.0,
              max_body_bytes: int = MAX_BODY_BYTES, log_requests: bool = True,
              stats_interval: float | None = STATS_INTERVAL_S) -> FastAPI:
    """The server app around a (not yet started) AsyncLLM; the app's lifespan starts it and
    shuts it down (letting in-flight requests run for up to `shutdown_timeout` s). Request
    bodies over `max_body_bytes` are refused with 413 as soon as that many have arrived.
    log_requests: an access line per request; stats_interval: seconds between engine stats
    lines while busy (None: none)."""
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key must not be empty: an empty key would let in any empty "
                         "bearer token (pass None to serve without a key)")
    if stats_interval is not None and not stats_interval > 0:
        raise ValueError(f"stats_interval must be > 0 seconds or None, got {stats_interval!r}")
    models = ServedModels(async_llm.engine)
    metrics = ServerMetrics(async_llm)
    handler = CompletionHandler(async_llm, metrics, models)
    tokenization = TokenizationHandler(async_llm.engine.tokenizer, models)
    bodies = BodyReader(max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async_llm.start()
        stats = None
        if stats_interval is not None:
            stats = asyncio.ensure_future(StatLogger(async_llm, metrics, stats_interval).run())
        yield
        if stats is not None:
            stats.cancel()
        await async_llm.shutdown(timeout=shutdown_timeout)
        await bodies.close()

    app = FastAPI(title="codeinfer", version=__version__, lifespan=lifespan)
    openapi.install(app, [CompletionRequest, TokenizeRequest, DetokenizeRequest])
    app.state.async_llm = async_llm
    app.state.metrics = metrics
    app.state.bodies = bodies

    if api_key is not None:
        app.add_middleware(_APIKeyMiddleware, api_key=api_key, metrics=metrics)
    if log_requests:  # outermost: it logs the 401s too
        app.add_middleware(AccessLogMiddleware)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(INTERNAL_ERROR, "server_error"), status_code=500)

    @app.get("/health")
    async def health():
        if async_llm.error is not None:
            return JSONResponse(error_body(async_llm.error, "server_error"), status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def get_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/v1/models")
    async def list_models():
        return models.cards()

    @app.post("/tokenize", openapi_extra=openapi.body_of(TokenizeRequest),
              responses={200: {"model": TokenizeResponse}})
    async def tokenize(request: Request):
        return await tokenization.tokenize(parse_body(TokenizeRequest, await bodies.json(request)))

    @app.post("/detokenize", openapi_extra=openapi.body_of(DetokenizeRequest),
              responses={200: {"model": DetokenizeResponse}})
    async def detokenize(request: Request):
        return tokenization.detokenize(parse_body(DetokenizeRequest, await bodies.json(request)))

    @app.post("/v1/completions", openapi_extra=openapi.body_of(CompletionRequest))
    async def completions(request: Request):
        try:
            body = await bodies.json(request)
            req = parse_completion_request(body)
            return await handler.create(req, request)
        except APIError as exc:
            if exc.status != 503 or exc.code != "queue_full":
                metrics.requests.labels("invalid" if exc.status < 500 else "error").inc()
            else:
                metrics.requests.labels("rejected").inc()
            return exc.response()
        except Exception as exc:  # a bug here must cost one request, not the server
            logger.exception("completion request failed")
            metrics.requests.labels("error").inc()
            return APIError(500, INTERNAL_ERROR, type="server_error").response()

    @app.post("/v1/chat/completions")
    async def chat_completions():
        raise APIError(404, "chat completions are not supported: these are code-completion "
                            "models; use /v1/completions", code="unsupported_endpoint")

    return app


class _APIKeyMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware, which would get in the way of streaming and
    disconnects): /v1/* and _KEYED_PATHS need `Authorization: Bearer KEY`."""

    def __init__(self, app, api_key: str, metrics: ServerMetrics):
        self.app, self.api_key, self.metrics = app, api_key.encode(), metrics

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path.startswith("/v1/") or path in _KEYED_PATHS):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.api_key):
                self.metrics.requests.labels("unauthorized").inc()
                response = JSONResponse(
                    error_body("Invalid or missing API key (send Authorization: Bearer KEY).",
                               "invalid_request_error", None, "invalid_api_key"),
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
