"""The error envelope on every path, correlation ids, and bounded request bodies.

Every error — unknown routes (404), wrong methods (405), bodies that are too large (413),
malformed JSON, invalid fields, refusals, unexpected failures (500) — is answered with the
envelope ``{"error": {"code", "message", "details", "correlation_id"}}`` and the HTTP status
of its stable code. ``X-Correlation-Id`` is accepted when it matches
``^[A-Za-z0-9-]{1,64}$``, replaced otherwise, generated when absent, returned on every
response and logged.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from orchestrator_core import ErrorCode, OrchestratorError, RequestInvalid, http_status_for
from orchestrator_core.api import request_invalid
from orchestrator_core.openai import openai_error
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestratord.logs import correlation_id_var, log

__all__ = [
    "CorrelationMiddleware",
    "correlation_id",
    "correlation_id_of",
    "error_response",
    "install_error_handlers",
    "is_openai_path",
    "read_body",
    "read_limited",
]

_CORRELATION_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def correlation_id() -> str:
    """The correlation id of the request being served (a fresh one outside a request)."""
    return correlation_id_var.get() or uuid.uuid4().hex


def correlation_id_of(scope: Scope) -> str:
    """The request's ``X-Correlation-Id`` when it is well formed, else a fresh one."""
    incoming = None
    for name, value in scope.get("headers", ()):
        if name == b"x-correlation-id":
            incoming = value.decode("latin-1")
            break
    return incoming if incoming and _CORRELATION_RE.match(incoming) else uuid.uuid4().hex


def is_openai_path(path: str) -> bool:
    """Is ``path`` one of the OpenAI-compatible routes (errors in OpenAI's shape)?"""
    return path == "/v1" or path.startswith("/v1/")


def error_response(
    err: OrchestratorError, status: int | None = None, *, path: str = ""
) -> JSONResponse:
    """The error of ``err`` with its status (from the code table unless given): our
    envelope, or OpenAI's ``{"error": {message, type, param, code}}`` on ``/v1`` paths."""
    if status is None:
        status = http_status_for(err.code)
    headers: dict[str, str] = {}
    if err.code in (
        ErrorCode.QUEUE_FULL,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.NOT_LEADER,
        ErrorCode.STORE_UNAVAILABLE,
    ):
        headers["Retry-After"] = str(int(err.details.get("retry_after_s", 1)))
    if err.code is ErrorCode.NOT_LEADER and err.details.get("leader"):
        headers["X-Orchestrator-Leader"] = str(err.details["leader"])
    if err.code is ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    body = openai_error(err) if is_openai_path(path) else err.to_envelope(correlation_id())
    return JSONResponse(body, status_code=status, headers=headers)


def _query_errors(exc: RequestValidationError) -> RequestInvalid:
    return request_invalid(exc.errors(), skip_loc=("query", "header", "path"), root="query")


class CorrelationMiddleware:
    """Pure ASGI middleware: correlation id in and out, and a last-resort error envelope for
    anything unexpected (500 INTERNAL, no stack trace in the reply)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = correlation_id_of(scope)
        token = correlation_id_var.set(cid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                headers.append((b"x-correlation-id", cid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log(
                "http.error",
                "unhandled error",
                level=logging.ERROR,
                exc_info=True,
                path=scope.get("path"),
            )
            if not started:
                err = OrchestratorError("internal error", code=ErrorCode.INTERNAL)
                path = str(scope.get("path", ""))
                await error_response(err, path=path)(scope, receive, send_with_id)
        finally:
            correlation_id_var.reset(token)


async def read_limited(chunks: AsyncIterable[bytes], declared: str | None, limit: int) -> bytes:
    """A request body from ``chunks``, refusing more than ``limit`` bytes (413) without
    reading it all: at once when the declared ``Content-Length`` is over, else as soon as
    the chunks pass it."""
    too_large = OrchestratorError(
        f"body: larger than {limit} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading it all."""
    return await read_limited(request.stream(), request.headers.get("content-length"), limit)


def install_error_handlers(app: FastAPI) -> None:
    """Answer refusals, routing errors and query/header validation errors with the
    envelope (never FastAPI's 422)."""

    @app.exception_handler(OrchestratorError)
    async def _orchestrator_error(request: Request, exc: OrchestratorError) -> JSONResponse:
        return error_response(exc, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            msg, code = f"no route {request.method} {request.url.path}", ErrorCode.ROUTE_NOT_FOUND
        elif exc.status_code == 405:
            msg = f"method {request.method} not allowed on {request.url.path}"
            code = ErrorCode.METHOD_NOT_ALLOWED
        elif exc.status_code == 413:
            msg, code = str(exc.detail), ErrorCode.PAYLOAD_TOO_LARGE
        else:
            msg = str(exc.detail)
            code = ErrorCode.INVALID_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL
        err = OrchestratorError(msg, code=code)
        response = error_response(err, status=exc.status_code, path=request.url.path)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_query_errors(exc), path=request.url.path)
