"""``/v2/pools``: pool agents register, heartbeat and unregister (pool tokens); anyone
authenticated lists the pools with their derived status."""

from __future__ import annotations

from fastapi import APIRouter, Request
from orchestrator_core import PoolHeartbeat, PoolInfo, PoolNotFound, PoolRegistration
from pydantic import BaseModel

from orchestratord.api.errors import read_body
from orchestratord.api.openapi import body, errors
from orchestratord.auth import Authenticator
from orchestratord.orchestrator import Orchestrator

__all__ = ["PoolList", "router"]


class PoolList(BaseModel):
    """``GET /v2/pools``: every registered pool with its derived status."""

    pools: list[PoolInfo]


def router(orch: Orchestrator, auth: Authenticator) -> APIRouter:
    """The ``/v2/pools`` routes over ``orch``."""
    api = APIRouter(tags=["pools"])
    limit = orch.config.server.max_body_bytes

    @api.post(
        "/v2/pools/register",
        response_model=PoolInfo,
        responses=errors(400, 409, 413),
        openapi_extra=body("PoolRegistration"),
        summary="Register (or refresh) a pool",
    )
    async def register_pool(request: Request) -> PoolInfo:
        who = auth.authenticate(request.headers.get("authorization"), "pool")
        reg = PoolRegistration.parse(await read_body(request, limit))
        info = orch.fleet.register(reg, who)
        await orch.ctx.cluster.settled()  # the client reads its own write
        return info

    @api.post(
        "/v2/pools/{pool_id}/heartbeat",
        response_model=PoolInfo,
        responses=errors(400, 404, 413),
        openapi_extra=body("PoolHeartbeat"),
        summary="Heartbeat with the pool's GPU and worker inventory",
    )
    async def heartbeat(request: Request, pool_id: str) -> PoolInfo:
        who = auth.authenticate(request.headers.get("authorization"), "pool")
        beat = PoolHeartbeat.parse(await read_body(request, limit))
        info = orch.fleet.heartbeat(pool_id, beat, who)
        await orch.ctx.cluster.settled()  # the client reads its own write
        return info

    @api.delete(
        "/v2/pools/{pool_id}",
        response_model=PoolInfo,
        responses=errors(404),
        summary="Unregister a pool",
    )
    async def unregister_pool(request: Request, pool_id: str) -> PoolInfo:
        who = auth.authenticate(request.headers.get("authorization"), "pool")
        info = orch.fleet.unregister(pool_id, who)
        await orch.ctx.cluster.settled()  # the client reads its own write
        return info

    @api.get("/v2/pools", response_model=PoolList, responses=errors())
    async def list_pools(request: Request) -> PoolList:
        """Every registered pool with its derived status."""
        auth.authenticate(request.headers.get("authorization"), "any")
        return PoolList(pools=orch.ctx.cluster.pools())

    @api.get("/v2/pools/{pool_id}", response_model=PoolInfo, responses=errors(404))
    async def get_pool(request: Request, pool_id: str) -> PoolInfo:
        """One pool with its derived status."""
        auth.authenticate(request.headers.get("authorization"), "any")
        pool = orch.ctx.cluster.pool(pool_id)
        if pool is None:
            raise PoolNotFound(pool_id)
        return pool

    return api
