"""The hot routes, answered before FastAPI's routing (see :mod:`orchestratord.api.exchange`),
and the guard that every request passes first (a follower refuses writes).

:class:`FastLane` is a pure ASGI middleware: a request to one of its routes is served by that
route's handler over an :class:`~orchestratord.api.exchange.Exchange`; anything else goes on
to the FastAPI app (where the same routes are declared, for the OpenAPI document). Every
answer keeps the daemon's contract: the correlation id in and out and in the logs, errors as
the envelope (or OpenAI's shape on ``/v1``) with their status, a 500 ``INTERNAL`` without a
stack trace for anything unexpected, and a client that leaves is noticed at once (the
route's disconnect callback runs and its handler is cancelled).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from orchestrator_core import ErrorCode, OrchestratorError
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestratord.api import openai, tasks
from orchestratord.api.errors import correlation_id_of
from orchestratord.api.exchange import ClientGone, Exchange
from orchestratord.auth import Authenticator
from orchestratord.logs import correlation_id_var, log
from orchestratord.orchestrator import Orchestrator

__all__ = ["FastLane", "Handler", "ParamHandler", "hot_routes"]

Handler = Callable[[Exchange], Awaitable[None]]
"""Serves one exchange."""

ParamHandler = Callable[[Exchange, str], Awaitable[None]]
"""Serves one exchange whose path has one parameter segment."""


class FastLane:
    """ASGI middleware serving ``exact`` routes (``(method, path)``) and ``param`` routes
    (``(method, prefix, suffix)``: one non-empty segment without ``/`` in between) itself."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        exact: Mapping[tuple[str, str], Handler],
        param: Sequence[tuple[str, str, str, ParamHandler]] = (),
        guard: Callable[[str, str], OrchestratorError | None] | None = None,
    ) -> None:
        self.app = app
        self.exact = dict(exact)
        self.param = tuple(param)
        self.guard = guard
        """Asked first about every request (``method, path``): an error refuses it."""

    def route(self, method: str, path: str) -> Handler | None:
        """The handler of ``method path``, or ``None`` (FastAPI serves it)."""
        handler = self.exact.get((method, path))
        if handler is not None:
            return handler
        for m, prefix, suffix, serve in self.param:
            if method != m or not path.startswith(prefix) or not path.endswith(suffix):
                continue
            segment = path[len(prefix) : len(path) - len(suffix)]
            if segment and "/" not in segment:
                return _bind(serve, segment)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        refused = None if self.guard is None else self.guard(method, path)
        handler = self.route(method, path) if refused is None else _refuse(refused)
        if handler is None:
            await self.app(scope, receive, send)
            return
        cid = correlation_id_of(scope)
        token = correlation_id_var.set(cid)
        ex = Exchange(scope, receive, send, cid)
        try:
            await handler(ex)
        except ClientGone:
            pass
        except asyncio.CancelledError:
            if not ex.disconnected:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our own cancel, for a client that left: done
        except OrchestratorError as err:
            await ex.error(err)
        except Exception:
            log("http.error", "unhandled error", level=logging.ERROR, exc_info=True, path=ex.path)
            await ex.error(OrchestratorError("internal error", code=ErrorCode.INTERNAL))
        finally:
            ex.close()
            correlation_id_var.reset(token)


def _refuse(err: OrchestratorError) -> Handler:
    async def handler(ex: Exchange) -> None:
        raise err

    return handler


def _bind(serve: ParamHandler, segment: str) -> Handler:
    async def handler(ex: Exchange) -> None:
        await serve(ex, segment)

    return handler


def hot_routes(
    orch: Orchestrator, auth: Authenticator
) -> tuple[dict[tuple[str, str], Handler], list[tuple[str, str, str, ParamHandler]]]:
    """``(exact, param)`` of :class:`FastLane` for the daemon's hot routes."""
    exact: dict[tuple[str, str], Handler] = {
        ("POST", "/v2/tasks"): tasks.submit_handler(orch, auth),
        **{("POST", path): serve for path, serve in openai.hot_handlers(orch, auth).items()},
    }
    param: list[tuple[str, str, str, ParamHandler]] = [
        ("GET", "/v2/tasks/", "/events", tasks.events_handler(orch, auth)),
    ]
    return exact, param
