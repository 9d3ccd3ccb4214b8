"""``/v2/tasks``: submit a task, list jobs, one job's status, cancel, and follow its events
over SSE (``Last-Event-ID`` resumes; a finished job's events are replayed from the store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from orchestrator_core import JobStatusResponse, TaskSubmitRequest, TaskSubmitResponse
from pydantic import BaseModel, Field

from orchestratord.api.errors import correlation_id, read_body
from orchestratord.api.openapi import body, errors
from orchestratord.auth import Authenticator
from orchestratord.orchestrator import Orchestrator
from orchestratord.services.views import visible_to
from orchestratord.store import JobFilter
from orchestratord.streams import format_sse, keepalive

__all__ = ["TaskList", "router"]

KEEPALIVE_S = 15.0
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class TaskList(BaseModel):
    """``GET /v2/tasks``: a page of jobs, newest first."""

    items: list[JobStatusResponse]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at end")


def router(orch: Orchestrator, auth: Authenticator) -> APIRouter:
    """The ``/v2/tasks`` routes over ``orch``."""
    api = APIRouter(tags=["tasks"])
    _jobs(api, orch, auth)
    _cancel(api, orch, auth)
    _events(api, orch, auth)
    return api


def _jobs(api: APIRouter, orch: Orchestrator, auth: Authenticator) -> None:
    """Submit, list, one job's status."""
    limit = orch.config.server.max_body_bytes

    @api.post(
        "/v2/tasks",
        status_code=202,
        response_model=TaskSubmitResponse,
        responses=errors(400, 404, 413, 429, 503),
        openapi_extra=body("TaskSubmitRequest"),
        summary="Submit a task; 202 once it is durably queued",
    )
    async def submit(request: Request) -> JSONResponse:
        who = auth.authenticate(request.headers.get("authorization"), "client")
        req = TaskSubmitRequest.parse(await read_body(request, limit))
        reply = await orch.admission.submit(req, principal=who, correlation_id=correlation_id())
        return JSONResponse(
            reply.model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/v2/tasks/{reply.job_id}"},
        )

    @api.get(
        "/v2/tasks",
        response_model=TaskList,
        responses=errors(400),
        summary="List jobs, newest first",
    )
    async def list_tasks(  # noqa: PLR0917 - FastAPI query parameters
        request: Request,
        status: Annotated[
            Literal["queued", "running", "completed", "failed", "cancelled"] | None, Query()
        ] = None,
        priority: Annotated[Literal["interactive", "batch"] | None, Query()] = None,
        session: Annotated[str | None, Query(max_length=128)] = None,
        model: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    ) -> TaskList:
        who = auth.authenticate(request.headers.get("authorization"), "client")
        flt = JobFilter(status=status, priority=priority, session_id=session, model=model)
        page = await orch.views.list_jobs(
            flt, limit=limit, cursor=None if cursor is None else int(cursor), principal=who
        )
        return TaskList(items=page.items, next_cursor=page.next_cursor)

    @api.get(
        "/v2/tasks/{job_id}",
        response_model=JobStatusResponse,
        responses=errors(404),
        summary="Status of one job",
    )
    async def get_task(request: Request, job_id: str) -> JobStatusResponse:
        who = auth.authenticate(request.headers.get("authorization"), "client")
        return await orch.views.status(job_id, who)


def _cancel(api: APIRouter, orch: Orchestrator, auth: Authenticator) -> None:
    """Cancel, by DELETE or POST (idempotent)."""

    async def cancel(request: Request, job_id: str) -> JobStatusResponse:
        who = auth.authenticate(request.headers.get("authorization"), "client")
        a = orch.ctx.jobs.visible(job_id)
        if a is not None and visible_to(a.job, who):
            await orch.lifecycle.stop_job(a, "cancel")
        return await orch.views.status(job_id, who)

    for method, path, summary, name in (
        (
            "DELETE",
            "/v2/tasks/{job_id}",
            "Cancel a job (idempotent; a finished job is returned as it is)",
            "cancel_task",
        ),
        (
            "POST",
            "/v2/tasks/{job_id}/cancel",
            "Cancel a job (same as DELETE /v2/tasks/{job_id})",
            "cancel_task_post",
        ),
    ):
        api.add_api_route(
            path,
            cancel,
            methods=[method],
            response_model=JobStatusResponse,
            responses=errors(404),
            summary=summary,
            name=name,
        )


def _events(api: APIRouter, orch: Orchestrator, auth: Authenticator) -> None:
    """Follow a job's events over SSE."""

    @api.get(
        "/v2/tasks/{job_id}/events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "SSE: queued, started, token*, metrics*, then end or error",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **errors(400, 404),
        },
        summary="Follow a job's events (SSE); Last-Event-ID resumes",
    )
    async def events(
        request: Request,
        job_id: str,
        last_event_id: Annotated[
            str | None, Header(alias="Last-Event-ID", pattern=r"^[0-9]{1,18}$")
        ] = None,
    ) -> StreamingResponse:
        who = auth.authenticate(request.headers.get("authorization"), "client")
        await orch.views.lookup(job_id, who)
        after = int(last_event_id) if last_event_id else 0
        live = orch.ctx.jobs.stream_of(job_id)
        if live is None:
            stored = await orch.store.events_after(job_id, after)

            async def replay() -> AsyncIterator[bytes]:
                for ev in stored:
                    yield format_sse(ev)

            return StreamingResponse(replay(), media_type="text/event-stream", headers=_SSE_HEADERS)

        following = not live.terminal_sent
        if following:
            orch.lifecycle.subscribe(live)

        async def follow() -> AsyncIterator[bytes]:
            try:
                async for ev in live.stream.follow(after, idle_s=KEEPALIVE_S):
                    yield keepalive() if ev is None else format_sse(ev)
            finally:
                if following:
                    orch.lifecycle.unsubscribe(live)

        return StreamingResponse(follow(), media_type="text/event-stream", headers=_SSE_HEADERS)
