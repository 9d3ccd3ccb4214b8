"""Running ASGI apps with uvicorn inside an asyncio program, and small HTTP helpers.

:func:`serve_app` starts a uvicorn server as a task of the running event loop on a socket it
binds itself (port 0 = a free port), so the caller knows the URL before the first request.
The simulated pool uses it to run one simulated engine per worker in-process; the agents use
it for their own API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

import uvicorn
from orchestrator_core.errors import ErrorCode, FieldError, OrchestratorError, RequestInvalid
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from llorch_pool.protocol import CORRELATION_HEADER, correlation_id_from

__all__ = [
    "Endpoint",
    "EndpointWithId",
    "RunningServer",
    "bind_socket",
    "error_response",
    "free_port",
    "guarded",
    "read_json",
    "request_correlation_id",
    "serve_app",
]

log = logging.getLogger("llorch_pool.serving")


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port`` (port 0 = a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for processes that must be told a port up front)."""
    with contextlib.closing(bind_socket(host, 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the host program's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class RunningServer:
    """A uvicorn server running as a task of the current event loop."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, task: asyncio.Task[None]):
        self._server = server
        self._socket = sock
        self.task = task
        host, port = sock.getsockname()[:2]
        self.host: str = host
        self.port: int = port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """True until the server task has finished."""
        return not self.task.done()

    async def stop(self, *, force: bool = False, timeout_s: float = 5.0) -> None:
        """Stop accepting, let open requests finish (or close them at once with ``force``),
        and wait for the server task."""
        self._server.should_exit = True
        if force:
            self._server.force_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
        except TimeoutError:
            self._server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        except Exception:  # the server task failed; it is stopped either way
            log.debug("server task ended with an error", exc_info=True)
        finally:
            self._socket.close()


async def serve_app(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    embedded: bool = True,
) -> RunningServer:
    """Start ``app`` on ``host:port`` as a task of the running loop; return once it accepts.

    ``embedded=False`` lets uvicorn install its SIGINT/SIGTERM handlers (for a program whose
    only job is this server).
    """
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server: uvicorn.Server = _EmbeddedServer(config) if embedded else uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn:{port}")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # re-raise the startup error
            raise RuntimeError("server stopped during startup")
        await asyncio.sleep(0.005)
    return RunningServer(server, sock, task)


def error_response(
    exc: OrchestratorError,
    correlation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error envelope (docs/design/errors.md) with the HTTP status of the core's code
    table."""
    extra = dict(headers or {})
    if correlation_id is not None:
        extra[CORRELATION_HEADER] = correlation_id
    retry_after = exc.details.get("retry_after_s")
    if isinstance(retry_after, int):
        extra["Retry-After"] = str(retry_after)
    return JSONResponse(exc.to_envelope(correlation_id), status_code=exc.http_status, headers=extra)


def request_correlation_id(request: Request) -> str:
    """The request's valid correlation id, or a fresh one."""
    return correlation_id_from(request.headers.get(CORRELATION_HEADER))


async def read_json(request: Request) -> Mapping[str, Any]:
    """The request body as a JSON object; :class:`RequestInvalid` (``INVALID_REQUEST``)
    for malformed JSON or a body that is not an object."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalid(
            [FieldError("body", ErrorCode.INVALID_REQUEST, f"body: malformed JSON ({exc})")]
        ) from None
    if not isinstance(data, dict):
        raise RequestInvalid(
            [FieldError("body", ErrorCode.INVALID_REQUEST, "body: must be a JSON object")]
        )
    return data


EndpointWithId = Callable[[Request, str], Awaitable[Response]]
"""A handler that takes the request and its correlation id (see :func:`guarded`)."""

Endpoint = Callable[[Request], Awaitable[Response]]
"""A Starlette endpoint."""


def guarded(
    handler: EndpointWithId, *, authorize: Callable[[Request], None] | None = None
) -> Endpoint:
    """The one error boundary of an API endpoint.

    The wrapped endpoint reads the request's correlation id, runs ``authorize`` (which raises
    an :class:`OrchestratorError` to refuse), then ``handler(request, correlation_id)``; any
    :class:`OrchestratorError` raised on the way becomes the error envelope
    (:func:`error_response`) carrying the correlation id.
    """

    async def endpoint(request: Request) -> Response:
        cid = request_correlation_id(request)
        try:
            if authorize is not None:
                authorize(request)
            return await handler(request, cid)
        except OrchestratorError as exc:
            return error_response(exc, cid)

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    endpoint.__doc__ = handler.__doc__
    return endpoint
