"""One HTTP exchange on the hot routes, straight on ASGI (no framework in between).

The routes every job goes through — ``POST /v1/completions``, ``POST /v1/chat/completions``,
``POST /v2/tasks`` and ``GET /v2/tasks/{id}/events`` — are served by
:class:`~orchestratord.api.fastlane.FastLane` in front of the FastAPI app: FastAPI's
middleware, routing and ``StreamingResponse`` cost more CPU per job than admission and
scheduling together. An :class:`Exchange` is what those routes see: the request's headers
and bounded body, and the replies they send — JSON, an error (the same envelope or OpenAI
shape, status and headers as every other route), or an SSE stream written chunk by chunk
with the correlation id on every response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from orchestrator_core import OrchestratorError
from starlette.types import Receive, Scope, Send

from orchestratord.api.errors import error_response, read_limited

__all__ = ["ClientGone", "Exchange"]

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(Exception):
    """The client closed its connection before the request's body was read."""


class Exchange:
    """A request on a hot route and its reply (see the module docstring)."""

    __slots__ = (
        "_gone",
        "_task",
        "cid",
        "completed",
        "disconnected",
        "headers",
        "path",
        "receive",
        "scope",
        "send",
        "started",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, cid: str) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.cid = cid
        self.path: str = scope["path"]
        self.headers: dict[bytes, bytes] = dict(scope.get("headers", ()))
        """Request headers by lower-case name (the last of repeated ones)."""
        self.started = False
        """True once the response's status line went out (errors can no longer be sent)."""
        self.completed = False
        """True once the last piece of the reply is being sent."""
        self.disconnected = False
        """True once the client left mid-reply (its handler was cancelled)."""
        self._gone: asyncio.Task[Any] | None = None
        self._task = asyncio.current_task()

    def header(self, name: bytes) -> str | None:
        """The request header ``name`` (lower case), decoded, or ``None``."""
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    async def body(self, limit: int) -> bytes:
        """The request body, refusing more than ``limit`` bytes (413) without reading it all;
        :class:`ClientGone` if the client leaves first."""

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        return await read_limited(chunks(), self.header(b"content-length"), limit)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """If the client closes its connection before the reply is complete: call
        ``callback``, then cancel the task serving this exchange (call once, after the body
        was read)."""

        async def watch() -> None:
            while (await self.receive())["type"] != "http.disconnect":
                pass
            if self._gone is None or self.completed:  # the reply is (being) completed
                return
            self.disconnected = True
            callback()
            if self._task is not None:
                self._task.cancel()

        self._gone = asyncio.ensure_future(watch())

    def close(self) -> None:
        """Stop watching for a disconnect (the reply is complete)."""
        if self._gone is not None:
            self._gone.cancel()
            self._gone = None

    async def json(
        self, content: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        """Reply with ``content`` as JSON."""
        body = orjson.dumps(content)
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-correlation-id", self.cid.encode()),
        ]
        for name, value in (headers or {}).items():
            raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self.started = self.completed = True
        await self.send({"type": "http.response.start", "status": status, "headers": raw})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def error(self, err: OrchestratorError) -> None:
        """Reply with ``err`` as every route does (envelope or OpenAI shape, its status and
        headers); nothing if the response already started."""
        if self.started:
            return
        response = error_response(err, path=self.path)
        response.headers["x-correlation-id"] = self.cid
        self.started = self.completed = True
        await response(self.scope, self.receive, self.send)

    async def start_sse(self, headers: dict[str, str] | None = None) -> None:
        """Send the status line and headers of an SSE stream."""
        raw = [*_SSE_HEADERS, (b"x-correlation-id", self.cid.encode())]
        for name, value in (headers or {}).items():
            raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": raw})

    async def write(self, data: bytes) -> None:
        """Send one piece of the stream."""
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        """Send the last piece of the stream and complete the response."""
        self.completed = True
        await self.send({"type": "http.response.body", "body": data, "more_body": False})
