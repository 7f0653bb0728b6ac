"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over AsyncLLM. The engine core never imports it."""

from .app import build_app

__all__ = ["build_app"]
