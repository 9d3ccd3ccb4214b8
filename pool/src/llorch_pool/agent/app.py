"""The pool agent's HTTP API (what the orchestrator calls).

=========================  =======================================================
``POST /v2/workers/start``  ``{model_ref, gpu_id}`` → 202 ``{worker_id}``; 409
                            ``INSUFFICIENT_VRAM`` / ``MODEL_INCOMPATIBLE``; 400 for a
                            bad body or an unknown ``gpu_id``
``POST /v2/workers/stop``   ``{worker_id}`` → 202 ``{worker_id}``; 404
                            ``WORKER_NOT_FOUND``; 409 ``INVALID_STATE`` (static worker)
``GET /v2/inventory``       :class:`~llorch_pool.protocol.PoolInventory`
``GET /health``             liveness of the agent and its link to the orchestrator
=========================  =======================================================

Errors use the envelope of docs/design/errors.md. When an API token is configured, ``/v2/*`` needs
``Authorization: Bearer <token>`` (401 ``UNAUTHORIZED`` without, 403 ``FORBIDDEN`` if wrong).
The token may be the ``api_token`` or the pool's own orchestrator token (the one it registers
with): the orchestrator, which knows that token, sends it back on its worker starts and stops.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Protocol

from orchestrator_core.errors import ErrorCode, FieldError, OrchestratorError, RequestInvalid
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from llorch_pool.agent.link import OrchestratorLink
from llorch_pool.agent.workers import WorkerManager
from llorch_pool.protocol import (
    CORRELATION_HEADER,
    PoolInventory,
    WorkerStartRequest,
    WorkerStopRequest,
)
from llorch_pool.serving import guarded, read_json

__all__ = ["PoolApiHost", "check_bearer_token", "create_pool_app"]


class PoolApiHost(Protocol):
    """What the pool API serves: the pool agent (:class:`~llorch_pool.agent.runtime.PoolAgent`)
    as this module sees it, so that the agent imports the app and not the other way round."""

    pool_id: str
    api_token: str | None
    workers: WorkerManager
    link: OrchestratorLink | None

    @property
    def accepted_tokens(self) -> tuple[str, ...]:
        """Bearer tokens the API accepts; empty = no token needed."""
        ...

    def inventory(self) -> PoolInventory:
        """GPUs, workers, models and worker protocols, stamped now."""
        ...


def check_bearer_token(request: Request, token: str | Sequence[str] | None) -> None:
    """Require ``Authorization: Bearer <token>`` (nothing to check when ``token`` is None or
    empty; a sequence = any of these tokens): raises ``UNAUTHORIZED`` without a bearer token,
    ``FORBIDDEN`` for a wrong one. Every candidate is compared in constant time."""
    tokens = [token] if isinstance(token, str) else list(token or ())
    if not tokens:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise OrchestratorError("a bearer token is required", code=ErrorCode.UNAUTHORIZED)
    ok = False
    for candidate in tokens:  # no early exit
        if hmac.compare_digest(given.encode(), candidate.encode()):
            ok = True
    if not ok:
        raise OrchestratorError("the bearer token is not valid", code=ErrorCode.FORBIDDEN)


def create_pool_app(agent: PoolApiHost, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The Starlette app of ``agent``'s API (plus ``extra_routes``, used by the simulator)."""

    def authorize(request: Request) -> None:
        check_bearer_token(request, agent.accepted_tokens)

    async def start(request: Request, cid: str) -> Response:
        req = WorkerStartRequest.parse(await read_json(request))
        if req.pool_id is not None and req.pool_id != agent.pool_id:
            msg = f"pool_id: this is pool {agent.pool_id!r}, not {req.pool_id!r}"
            raise RequestInvalid([FieldError("pool_id", ErrorCode.INVALID_PARAMETER, msg)])
        worker = agent.workers.start_worker(req.model_ref, req.gpu_id)
        return JSONResponse(
            {"worker_id": worker.worker_id}, status_code=202, headers={CORRELATION_HEADER: cid}
        )

    async def stop(request: Request, cid: str) -> Response:
        req = WorkerStopRequest.parse(await read_json(request))
        await agent.workers.stop_worker(req.worker_id)
        return JSONResponse(
            {"worker_id": req.worker_id}, status_code=202, headers={CORRELATION_HEADER: cid}
        )

    async def inventory(request: Request, cid: str) -> Response:
        return JSONResponse(agent.inventory().to_json(), headers={CORRELATION_HEADER: cid})

    async def health(request: Request) -> Response:
        link = agent.link
        body = {
            "status": "ok",
            "pool_id": agent.pool_id,
            "registered": link.registered if link else False,
            "heartbeats_ok": link.stats.heartbeats_ok if link else 0,
            "link_failures": link.stats.failures if link else 0,
            "last_link_error": link.stats.last_error if link else None,
            "orchestrator": link.base if link else None,
            "orchestrator_switches": link.stats.switches if link else 0,
        }
        return JSONResponse(body)

    routes: list[BaseRoute] = [
        Route("/v2/workers/start", guarded(start, authorize=authorize), methods=["POST"]),
        Route("/v2/workers/stop", guarded(stop, authorize=authorize), methods=["POST"]),
        Route("/v2/inventory", guarded(inventory, authorize=authorize), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes)
