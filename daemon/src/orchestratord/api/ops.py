"""Operations: ``/metrics`` (Prometheus text), ``/health`` (liveness) and ``/ready``
(readiness: recovery done and the store open; 503 until then)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from orchestratord.metrics import CONTENT_TYPE
from orchestratord.orchestrator import Orchestrator

__all__ = ["Health", "router"]


class Health(BaseModel):
    """``GET /health`` and ``GET /ready``."""

    status: Literal["ok", "starting"]
    uptime_s: float = 0.0
    queued: int = 0
    running: int = 0


def router(orch: Orchestrator) -> APIRouter:
    """The operations routes over ``orch``."""
    api = APIRouter(tags=["ops"])

    def health_now() -> Health:
        ctx = orch.ctx
        return Health(
            status="ok" if ctx.ready else "starting",
            uptime_s=round(max(0.0, ctx.clock() - ctx.started_at), 3) if ctx.ready else 0.0,
            queued=ctx.cluster.queued(),
            running=ctx.jobs.running(),
        )

    @api.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            }
        },
    )
    async def prometheus() -> Response:
        """Prometheus metrics (see docs/daemon.md for the list)."""
        return Response(orch.metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness: the process serves HTTP."""
        return health_now()

    @api.get("/ready", response_model=Health, responses={503: {"model": Health}})
    async def ready() -> JSONResponse:
        """Readiness: recovery is done and the store is open (503 until then)."""
        body = health_now()
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if orch.ready else 503)

    return api
