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
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator_core.errors import ErrorCode, FieldError, OrchestratorError, RequestInvalid
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from llorch_pool.protocol import CORRELATION_HEADER, WorkerStartRequest, WorkerStopRequest
from llorch_pool.serving import error_response, read_json, request_correlation_id

if TYPE_CHECKING:
    from llorch_pool.agent.runtime import PoolAgent

__all__ = ["create_pool_app"]


def create_pool_app(agent: PoolAgent, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The Starlette app of ``agent``'s API (plus ``extra_routes``, used by the simulator)."""

    def check_auth(request: Request) -> None:
        if agent.api_token is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise OrchestratorError("a bearer token is required", code=ErrorCode.UNAUTHORIZED)
        if not hmac.compare_digest(given.encode(), agent.api_token.encode()):
            raise OrchestratorError("the bearer token is not valid", code=ErrorCode.FORBIDDEN)

    async def start(request: Request) -> Response:
        cid = request_correlation_id(request)
        try:
            check_auth(request)
            req = WorkerStartRequest.parse(await read_json(request))
            if req.pool_id is not None and req.pool_id != agent.pool_id:
                msg = f"pool_id: this is pool {agent.pool_id!r}, not {req.pool_id!r}"
                raise RequestInvalid([FieldError("pool_id", ErrorCode.INVALID_PARAMETER, msg)])
            worker = agent.workers.start_worker(req.model_ref, req.gpu_id)
        except OrchestratorError as exc:
            return error_response(exc, cid)
        return JSONResponse(
            {"worker_id": worker.worker_id}, status_code=202, headers={CORRELATION_HEADER: cid}
        )

    async def stop(request: Request) -> Response:
        cid = request_correlation_id(request)
        try:
            check_auth(request)
            req = WorkerStopRequest.parse(await read_json(request))
            await agent.workers.stop_worker(req.worker_id)
        except OrchestratorError as exc:
            return error_response(exc, cid)
        return JSONResponse(
            {"worker_id": req.worker_id}, status_code=202, headers={CORRELATION_HEADER: cid}
        )

    async def inventory(request: Request) -> Response:
        cid = request_correlation_id(request)
        try:
            check_auth(request)
        except OrchestratorError as exc:
            return error_response(exc, cid)
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
        }
        return JSONResponse(body)

    routes: list[BaseRoute] = [
        Route("/v2/workers/start", start, methods=["POST"]),
        Route("/v2/workers/stop", stop, methods=["POST"]),
        Route("/v2/inventory", inventory, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes)
