"""``/v2/tasks``: submit a task, list jobs, one job's status, cancel, and follow its events
over SSE (``Last-Event-ID`` resumes; a finished job's events are replayed from the store).

Submitting and following events are the hot routes: served on the fast lane
(:func:`submit_handler`, :func:`events_handler`; see :mod:`orchestratord.api.fastlane`) and
declared on the router for the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from orchestrator_core import (
    ErrorCode,
    JobStatusResponse,
    RequestInvalid,
    TaskSubmitRequest,
    TaskSubmitResponse,
)
from orchestrator_core.errors import FieldError
from pydantic import BaseModel, Field

from orchestratord.api.exchange import Exchange
from orchestratord.api.openapi import body, errors, served_on_the_fast_lane
from orchestratord.auth import Authenticator
from orchestratord.orchestrator import Orchestrator
from orchestratord.services.views import visible_to
from orchestratord.store import JobFilter, StoredEvent
from orchestratord.streams import format_sse, keepalive

__all__ = ["TaskList", "events_handler", "router", "submit_handler"]

KEEPALIVE_S = 15.0
_LAST_EVENT_ID = re.compile(r"^[0-9]{1,18}$")


class TaskList(BaseModel):
    """``GET /v2/tasks``: a page of jobs, newest first."""

    items: list[JobStatusResponse]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at end")


def router(orch: Orchestrator, auth: Authenticator) -> APIRouter:
    """The ``/v2/tasks`` routes over ``orch``."""
    api = APIRouter(tags=["tasks"])
    _jobs(api, orch, auth)
    _cancel(api, orch, auth)
    _events(api)
    return api


def _jobs(api: APIRouter, orch: Orchestrator, auth: Authenticator) -> None:
    """Submit (declared; see :func:`submit_handler`), list, one job's status."""

    api.add_api_route(
        "/v2/tasks",
        served_on_the_fast_lane,
        methods=["POST"],
        status_code=202,
        response_model=TaskSubmitResponse,
        responses=errors(400, 404, 413, 429, 503),
        openapi_extra=body("TaskSubmitRequest"),
        summary="Submit a task; 202 once it is durably queued",
        name="submit",
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
        elif not orch.leading:  # the leader runs it: ask it (the answer is as of now)
            row = await orch.views.lookup(job_id, who)
            if not row.job.is_terminal:
                orch.request_cancel(job_id)
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


def _events(api: APIRouter) -> None:
    """Follow a job's events over SSE (declared here, served by :func:`events_handler`)."""
    api.add_api_route(
        "/v2/tasks/{job_id}/events",
        served_on_the_fast_lane,
        methods=["GET"],
        response_class=Response,
        responses={
            200: {
                "description": "SSE: queued, started, token*, metrics*, then end or error",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **errors(400, 404),
        },
        openapi_extra={
            "parameters": [
                {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": _LAST_EVENT_ID.pattern},
                },
            ]
        },
        summary="Follow a job's events (SSE); Last-Event-ID resumes",
        name="events",
    )


async def _write(ex: Exchange, batches: AsyncIterator[list[StoredEvent] | None]) -> None:
    """Send each batch of events in one write (a keepalive when idle); end after the
    terminal event."""
    async for batch in batches:
        data = keepalive() if batch is None else b"".join(map(format_sse, batch))
        if batch and batch[-1].terminal:
            await ex.end(data)
            return
        await ex.write(data)
    await ex.end()


def submit_handler(
    orch: Orchestrator, auth: Authenticator
) -> Callable[[Exchange], Awaitable[None]]:
    """``POST /v2/tasks``, served on the fast lane: 202 once the job is durably queued."""
    limit = orch.config.server.max_body_bytes

    async def submit(ex: Exchange) -> None:
        who = auth.authenticate(ex.header(b"authorization"), "client")
        req = TaskSubmitRequest.parse(await ex.body(limit))
        reply = await orch.admission.submit(req, principal=who, correlation_id=ex.cid)
        await ex.json(
            reply.model_dump(mode="json"),
            status=202,
            headers={"Location": f"/v2/tasks/{reply.job_id}"},
        )

    return submit


def events_handler(
    orch: Orchestrator, auth: Authenticator
) -> Callable[[Exchange, str], Awaitable[None]]:
    """``GET /v2/tasks/{job_id}/events``, served on the fast lane: the events after
    ``Last-Event-ID`` — from memory while the job is active (each batch published since the
    last write in one write), from the store once it is finished."""

    async def events(ex: Exchange, job_id: str) -> None:
        who = auth.authenticate(ex.header(b"authorization"), "client")
        last = ex.header(b"last-event-id")
        if last is not None and not _LAST_EVENT_ID.match(last):
            raise RequestInvalid(
                [
                    FieldError(
                        "Last-Event-ID",
                        ErrorCode.INVALID_PARAMETER,
                        "Last-Event-ID: must be an event id (1 to 18 digits)",
                    )
                ]
            )
        row = await orch.views.lookup(job_id, who)
        after = int(last) if last else 0
        live = orch.ctx.jobs.stream_of(job_id)
        if live is None and orch.leading and not row.job.is_terminal:
            live = await orch.adopt(job_id)  # stored by another daemon, not taken yet
        if live is None and not orch.leading and orch.remote is not None:
            ex.on_disconnect(lambda: None)
            await ex.start_sse()  # the leader runs it: its events come through the bus
            await _write(ex, orch.remote.follow_batches(job_id, after, idle_s=KEEPALIVE_S))
            return
        if live is None:
            stored = await orch.store.events_after(job_id, after)
            await ex.start_sse()
            await ex.end(b"".join(format_sse(ev) for ev in stored))
            return
        following = not live.terminal_sent
        if following:
            orch.lifecycle.subscribe(live)
        try:
            ex.on_disconnect(lambda: None)
            await ex.start_sse()
            await _write(ex, live.stream.follow_batches(after, idle_s=KEEPALIVE_S))
        finally:
            if following:
                orch.lifecycle.unsubscribe(live)

    return events
