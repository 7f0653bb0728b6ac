"""The OpenAPI page (/docs, /openapi.json) of routes that read their own bodies.

The POST routes read the body themselves (size limit while it arrives, JSON decoding off the
event loop: body.py) and validate it with a pydantic model (protocol.py), so FastAPI cannot see
their request schema; `body_of` names the model in the route and `install` adds the models'
JSON schemas to the document.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"


def body_of(schema: type[BaseModel]) -> dict:
    """A route's `openapi_extra`: its JSON request body is `schema`."""
    ref = {"$ref": _REF.format(model=schema.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def install(app: FastAPI, schemas: list[type[BaseModel]]) -> None:
    """Make app.openapi() include `schemas` (the request models named by body_of)."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for schema in schemas:
                model_schema = schema.model_json_schema(ref_template=_REF)
                components.update(model_schema.pop("$defs", {}))
                components[schema.__name__] = model_schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
