"""OpenAPI helpers: the error responses each route declares, request bodies declared from
the core types, and the served document (bearer auth on ``/v2`` routes when tokens are
required; FastAPI's 422 removed, since validation errors are 400 envelopes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from orchestrator_core import ErrorCode, ErrorEnvelope, OrchestratorError
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

__all__ = [
    "OpenAIErrorBody",
    "body",
    "errors",
    "install_openapi",
    "openai_errors",
    "served_on_the_fast_lane",
]


class OpenAIErrorDetail(BaseModel):
    """The inside of an OpenAI-shaped error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = Field(default=None, description="Our stable error code")


class OpenAIErrorBody(BaseModel):
    """An error on the ``/v1`` routes, in OpenAI's shape."""

    error: OpenAIErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request (INVALID_REQUEST, INVALID_PARAMETER, CONTEXT_TOO_LARGE)",
    401: "Missing or unknown bearer token (UNAUTHORIZED)",
    403: "Token of the wrong kind or owner (FORBIDDEN)",
    404: "Not found (JOB_NOT_FOUND, POOL_NOT_FOUND, MODEL_NOT_FOUND, unknown route)",
    405: "Method not allowed",
    409: "Conflict (POOL_CONFLICT)",
    413: "Body too large",
    429: "Queue full or quota exceeded (QUEUE_FULL, QUOTA_EXCEEDED); see Retry-After",
    500: "Internal error (INTERNAL, SCHEDULER_ERROR)",
    502: "The worker failed (WORKER_FAILED, DISPATCH_FAILED)",
    503: "Not ready or no capacity (POOL_UNAVAILABLE, NO_CAPACITY)",
    504: "The job exceeded its timeout (DEADLINE_EXCEEDED)",
}


def _responses(model: type[BaseModel], statuses: tuple[int, ...]) -> dict[int | str, Any]:
    out: dict[int | str, dict[str, Any]] = {}
    for s in (*statuses, 401, 403, 500):
        entry: dict[str, Any] = {"model": model, "description": _DESCRIPTIONS[s]}
        if s == 429:
            entry["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}
            }
        out[s] = entry
    return out


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that may answer ``statuses`` (401, 403 and 500 are
    always declared), each with the error envelope."""
    return _responses(ErrorEnvelope, statuses)


def openai_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """As :func:`errors`, for the ``/v1`` routes: errors in OpenAI's shape."""
    return _responses(OpenAIErrorBody, statuses)


def body(name: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a required JSON body of the component schema ``name``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


async def served_on_the_fast_lane() -> None:
    """The endpoint of a route that :class:`~orchestratord.api.fastlane.FastLane` answers
    before FastAPI routes anything: declared on the FastAPI app only for the OpenAPI
    document (its method, body and answers). Reaching it is a wiring bug: 500 INTERNAL."""
    raise OrchestratorError("this route is served by the fast lane", code=ErrorCode.INTERNAL)


def install_openapi(app: FastAPI, *, bearer: bool, bodies: Sequence[type[BaseModel]]) -> None:
    """Serve the document described in the module docstring, with bodies declared."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        _, defs = models_json_schema(
            [(m, "validation") for m in bodies], ref_template="#/components/schemas/{model}"
        )
        for key, value in defs.get("$defs", {}).items():
            components.setdefault(key, value)
        for key in ("HTTPValidationError", "ValidationError"):
            components.pop(key, None)
        if bearer:
            schemes = schema["components"].setdefault("securitySchemes", {})
            schemes["bearerAuth"] = {"type": "http", "scheme": "bearer"}
        for name, path in schema.get("paths", {}).items():
            for op in path.values():
                if isinstance(op, dict):
                    op.get("responses", {}).pop("422", None)
                    if bearer and name.startswith(("/v1/", "/v2/")):
                        op["security"] = [{"bearerAuth": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
