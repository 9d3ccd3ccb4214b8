"""Operations: ``/metrics`` (Prometheus text), ``/health`` (liveness, with the role) and
``/ready`` (readiness: the store open, recovery done and leading; 503 otherwise)."""

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
    role: Literal["leader", "follower"] = "leader"
    """``leader`` runs the queue; a ``follower`` (several daemons on PostgreSQL) stands by."""
    epoch: int | None = None
    """The leader term's epoch (PostgreSQL; ``null`` for a daemon alone)."""
    leader: str | None = None
    """The leader's URL, as this instance knows it."""


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
            role=orch.roles.role,
            epoch=orch.roles.epoch,
            leader=orch.roles.leader_url(),
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
        """Readiness to take jobs: the store is open, recovery is done and this instance
        leads (503 otherwise: a follower is not ready, so a load balancer sends clients to
        the leader)."""
        body = health_now()
        ok = orch.ready and orch.roles.recovered
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)

    return api
