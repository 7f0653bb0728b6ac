"""The model names this server answers to (vLLM's --served-model-name: aliases of the one loaded
model): what GET /v1/models lists and what a request's `model` must be."""

from __future__ import annotations

import time

from .protocol import APIError


class ServedModels:
    def __init__(self, engine):
        self.names = list(engine.served_model_names)
        # The longest sequence (prompt + completion) the model takes, in tokens.
        self.max_model_len = engine.config.max_position_embeddings
        self.created = int(time.time())

    def check(self, requested: str | None) -> str:
        """The name to answer with: the one requested, or the first when a request names none
        (as vLLM does). A name this server does not serve is a 404 `model_not_found`."""
        if requested is None:
            return self.names[0]
        if requested not in self.names:
            raise APIError(404, f"The model `{requested}` does not exist.", param="model",
                           code="model_not_found")
        return requested

    def cards(self) -> dict:
        """The body of GET /v1/models: one card per name."""
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": "codeinfer",
             "max_model_len": self.max_model_len} for name in self.names]}
