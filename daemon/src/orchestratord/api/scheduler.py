"""``/v2/scheduler``: the active scheduling policy, and its hot swap (operators only)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from orchestrator_core import ErrorCode, OrchestratorError

from orchestratord.api.errors import read_body
from orchestratord.api.openapi import body, errors
from orchestratord.auth import Authenticator
from orchestratord.orchestrator import Orchestrator
from orchestratord.services.policies import SchedulerUpdate, SchedulerView

__all__ = ["router"]


def router(orch: Orchestrator, auth: Authenticator) -> APIRouter:
    """The ``/v2/scheduler`` routes over ``orch``."""
    api = APIRouter(tags=["scheduler"])
    limit = orch.config.server.max_body_bytes

    @api.get("/v2/scheduler", response_model=SchedulerView, responses=errors())
    async def get_scheduler(request: Request) -> SchedulerView:
        """The active scheduling policy."""
        auth.authenticate(request.headers.get("authorization"), "client")
        return orch.scheduling.view()

    @api.put(
        "/v2/scheduler",
        response_model=SchedulerView,
        responses=errors(400, 413),
        openapi_extra=body("SchedulerUpdate"),
    )
    async def put_scheduler(request: Request) -> SchedulerView:
        """Validate a policy, store it durably and hot-swap it (operators only)."""
        who = auth.authenticate(request.headers.get("authorization"), "client")
        if not who.operator:
            raise OrchestratorError(
                "only operators may change the policy", code=ErrorCode.FORBIDDEN
            )
        update = SchedulerUpdate.parse(await read_body(request, limit))
        return await orch.scheduling.swap(update, who)

    return api
