"""The HTTP API of SYSTEM.md §3 as a FastAPI app, built by :func:`create_app` (no module-level
app, no singletons).

Every error, on every path — unknown routes (404), wrong methods (405), bodies that are too
large (413), malformed JSON, invalid fields, refusals, unexpected failures (500) — is the error
envelope ``{"error": {"code", "message", "details", "correlation_id"}}`` with a stable code.
Request bodies are parsed by the core types' ``parse`` (the same code and words as the CLI);
the served OpenAPI document declares those bodies and every error status each route can
answer, and nothing else (no FastAPI 422).

Correlation: ``X-Correlation-Id`` is accepted when it matches ``^[A-Za-z0-9-]{1,64}$``,
replaced otherwise, generated when absent, returned on every response and logged.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from orchestrator_core import (
    ErrorCode,
    ErrorEnvelope,
    JobStatusResponse,
    OrchestratorConfig,
    OrchestratorError,
    PoolHeartbeat,
    PoolInfo,
    PoolRegistration,
    RequestInvalid,
    TaskSubmitRequest,
    TaskSubmitResponse,
    http_status_for,
)
from orchestrator_core.errors import ConfigInvalid, FieldError
from orchestrator_core.scheduling.scheduler import SchedulerRegistry
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestratord.auth import Authenticator, Principal, Role
from orchestratord.logs import correlation_id_var, log
from orchestratord.metrics import CONTENT_TYPE, Metrics
from orchestratord.openai_workers import OpenAIWorkerClient
from orchestratord.pool_agents import HttpPoolAgentClient, PoolAgentClient
from orchestratord.runtime import Clock, Orchestrator
from orchestratord.scheduling_loop import SchedulerUpdate, SchedulerView, SchedulingLoop
from orchestratord.sqlite_store import SqliteStore
from orchestratord.store import JobFilter, MemoryStore, Store
from orchestratord.streams import format_sse, keepalive
from orchestratord.workers import NativeWorkerClient, ProtocolRoutingWorkerClient, WorkerClient

__all__ = ["create_app", "default_store", "default_worker_client", "sqlite_path"]

_CORRELATION_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_KEEPALIVE_S = 15.0


class TaskList(BaseModel):
    """``GET /v2/tasks``: a page of jobs, newest first."""

    items: list[JobStatusResponse]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at end")


class PoolList(BaseModel):
    """``GET /v2/pools``: every registered pool with its derived status."""

    pools: list[PoolInfo]


class Health(BaseModel):
    """``GET /health`` and ``GET /ready``."""

    status: Literal["ok", "starting"]
    uptime_s: float = 0.0
    queued: int = 0
    running: int = 0


def sqlite_path(config: OrchestratorConfig) -> Path:
    """Where the SQLite database lives: ``persistence.sqlite_path`` or
    ``<persistence.data_dir>/orchestratord.sqlite3`` (``~`` expanded)."""
    if config.persistence.sqlite_path:
        return Path(config.persistence.sqlite_path).expanduser()
    return Path(config.persistence.data_dir).expanduser() / "orchestratord.sqlite3"


def default_store(config: OrchestratorConfig) -> Store:
    """The store the configuration asks for (SQLite by default)."""
    backend = config.persistence.backend
    if backend == "memory":
        return MemoryStore()
    if backend == "postgres":
        raise ConfigInvalid(["persistence.backend: 'postgres' is not available in this build"])
    return SqliteStore(sqlite_path(config))


def default_worker_client() -> WorkerClient:
    """The daemon's worker client: each job goes to the client of its worker's protocol —
    :class:`NativeWorkerClient` for ``"llorch"`` workers, :class:`OpenAIWorkerClient` for
    ``"openai"`` ones (``WorkerInfo.protocol`` from the pool's heartbeats)."""
    return ProtocolRoutingWorkerClient(
        {"llorch": NativeWorkerClient(), "openai": OpenAIWorkerClient()}, default="llorch"
    )


# -- error rendering ---------------------------------------------------------------------------


def _correlation_id() -> str:
    return correlation_id_var.get() or uuid.uuid4().hex


def error_response(err: OrchestratorError, status: int | None = None) -> JSONResponse:
    """The envelope of ``err`` with its status (from the code table unless given)."""
    if status is None:
        status = http_status_for(err.code)
    headers: dict[str, str] = {}
    if err.code in (ErrorCode.QUEUE_FULL, ErrorCode.QUOTA_EXCEEDED):
        headers["Retry-After"] = str(int(err.details.get("retry_after_s", 1)))
    if err.code is ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(err.to_envelope(_correlation_id()), status_code=status, headers=headers)


def _query_errors(exc: RequestValidationError) -> RequestInvalid:
    errors: list[FieldError] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "header", "path")]
        name = ".".join(loc) or "query"
        got = repr(err.get("input"))[:60]
        kind = str(err.get("type", ""))
        ctx = err.get("ctx") or {}
        if kind == "missing":
            errors.append(FieldError(name, ErrorCode.INVALID_REQUEST, f"{name}: is required"))
            continue
        if kind == "literal_error":
            expected = str(ctx.get("expected", "")).replace("'", "")
            msg = f"{name}: must be one of {expected}, got {got}"
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            bound = next(iter(ctx.values()), "?")
            op = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">"}.get(
                kind, "<"
            )
            msg = f"{name}: must be {op} {bound}, got {got}"
        elif kind.startswith("int"):
            msg = f"{name}: must be an integer, got {got}"
        else:
            msg = f"{name}: {str(err.get('msg', 'invalid')).lower()}"
        errors.append(FieldError(name, ErrorCode.INVALID_PARAMETER, msg))
    return RequestInvalid(errors or [FieldError("query", ErrorCode.INVALID_REQUEST, "invalid")])


class CorrelationMiddleware:
    """Pure ASGI middleware: correlation id in and out, and a last-resort error envelope for
    anything unexpected (500 INTERNAL, no stack trace in the reply)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"x-correlation-id":
                incoming = value.decode("latin-1")
                break
        cid = incoming if incoming and _CORRELATION_RE.match(incoming) else uuid.uuid4().hex
        token = correlation_id_var.set(cid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                headers.append((b"x-correlation-id", cid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log(
                "http.error",
                "unhandled error",
                level=logging.ERROR,
                exc_info=True,
                path=scope.get("path"),
            )
            if not started:
                err = OrchestratorError("internal error", code=ErrorCode.INTERNAL)
                await error_response(err)(scope, receive, send_with_id)
        finally:
            correlation_id_var.reset(token)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OrchestratorError(
            f"body: larger than {limit} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OrchestratorError(
                f"body: larger than {limit} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE
            )
        chunks.append(chunk)
    return b"".join(chunks)


# -- OpenAPI -----------------------------------------------------------------------------------

_ERR: dict[str, Any] = {"model": ErrorEnvelope}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid request (INVALID_REQUEST, INVALID_PARAMETER, CONTEXT_TOO_LARGE)",
        401: "Missing or unknown bearer token (UNAUTHORIZED)",
        403: "Token of the wrong kind or owner (FORBIDDEN)",
        404: "Not found (JOB_NOT_FOUND, POOL_NOT_FOUND, MODEL_NOT_FOUND, unknown route)",
        405: "Method not allowed",
        409: "Conflict (POOL_CONFLICT)",
        413: "Body too large",
        429: "Queue full or quota exceeded (QUEUE_FULL, QUOTA_EXCEEDED); see Retry-After",
        500: "Internal error (INTERNAL, SCHEDULER_ERROR)",
        503: "Not ready (POOL_UNAVAILABLE)",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for s in (*statuses, 401, 403, 500):
        entry: dict[str, Any] = {**_ERR, "description": descriptions[s]}
        if s == 429:
            entry["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}
            }
        out[s] = entry
    return out


def _body(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


_BODY_MODELS: list[type[BaseModel]] = [
    TaskSubmitRequest,
    PoolRegistration,
    PoolHeartbeat,
    SchedulerUpdate,
]


def _openapi(app: FastAPI, *, bearer: bool) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        _, defs = models_json_schema(
            [(m, "validation") for m in _BODY_MODELS], ref_template="#/components/schemas/{model}"
        )
        for key, value in defs.get("$defs", {}).items():
            components.setdefault(key, value)
        for key in ("HTTPValidationError", "ValidationError"):
            components.pop(key, None)
        if bearer:
            schemes = schema["components"].setdefault("securitySchemes", {})
            schemes["bearerAuth"] = {"type": "http", "scheme": "bearer"}
        for name, path in schema.get("paths", {}).items():
            for op in path.values():
                if isinstance(op, dict):
                    op.get("responses", {}).pop("422", None)
                    if bearer and name.startswith("/v2/"):
                        op["security"] = [{"bearerAuth": []}]
        app.openapi_schema = schema
        return schema

    return build


# -- the app -----------------------------------------------------------------------------------


def create_app(
    config: OrchestratorConfig,
    *,
    store: Store | None = None,
    clock: Clock = time.time,
    worker_client: WorkerClient | None = None,
    pool_client: PoolAgentClient | None = None,
    metrics: Metrics | None = None,
    scheduler_registry: SchedulerRegistry | None = None,
) -> FastAPI:
    """Build the daemon's app for ``config``. The runtime starts and stops with the app's
    lifespan (``app.state.orchestrator`` is the :class:`Orchestrator`,
    ``app.state.scheduling`` the :class:`SchedulingLoop`). ``scheduler_registry`` names the
    policies ``scheduler.policy`` may choose (default: the core's built-ins). Raises
    :class:`ConfigInvalid` for a policy no scheduler is registered for."""
    metrics = metrics or Metrics()
    orch = Orchestrator(
        config,
        store=store if store is not None else default_store(config),
        worker_client=worker_client or default_worker_client(),
        pool_client=pool_client or HttpPoolAgentClient(),
        clock=clock,
        metrics=metrics,
    )
    loop = SchedulingLoop(orch, registry=scheduler_registry)
    auth = Authenticator(config)
    limit = config.server.max_body_bytes

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop.attach()
        await orch.start()
        loop.start()
        log("daemon.start", "serving", mode=config.mode, policy=loop.view().policy)
        try:
            yield
        finally:
            await loop.stop()
            await orch.stop()
            log("daemon.stop", "stopped")

    app = FastAPI(
        title="orchestratord",
        version="0.1.0",
        description="llama-orch orchestrator daemon: tasks, SSE events, pools, scheduler.",
        lifespan=lifespan,
    )
    app.state.orchestrator = orch
    app.state.scheduling = loop
    app.add_middleware(CorrelationMiddleware)
    app.openapi = _openapi(app, bearer=auth.required)  # type: ignore[method-assign]

    @app.exception_handler(OrchestratorError)
    async def _orchestrator_error(_r: Request, exc: OrchestratorError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            msg, code = f"no route {request.method} {request.url.path}", ErrorCode.ROUTE_NOT_FOUND
        elif exc.status_code == 405:
            msg = f"method {request.method} not allowed on {request.url.path}"
            code = ErrorCode.METHOD_NOT_ALLOWED
        elif exc.status_code == 413:
            msg, code = str(exc.detail), ErrorCode.PAYLOAD_TOO_LARGE
        else:
            msg = str(exc.detail)
            code = ErrorCode.INVALID_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL
        response = error_response(OrchestratorError(msg, code=code), status=exc.status_code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_query_errors(exc))

    def principal(request: Request, role: Role) -> Principal:
        return auth.authenticate(request.headers.get("authorization"), role)

    # -- tasks ---------------------------------------------------------------------------

    @app.post(
        "/v2/tasks",
        status_code=202,
        response_model=TaskSubmitResponse,
        responses=_errors(400, 404, 413, 429, 503),
        openapi_extra=_body("TaskSubmitRequest"),
        summary="Submit a task; 202 once it is durably queued",
        tags=["tasks"],
    )
    async def submit(request: Request) -> JSONResponse:
        who = principal(request, "client")
        req = TaskSubmitRequest.parse(await read_body(request, limit))
        reply = await orch.submit(req, principal=who, correlation_id=_correlation_id())
        return JSONResponse(
            reply.model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/v2/tasks/{reply.job_id}"},
        )

    @app.get(
        "/v2/tasks",
        response_model=TaskList,
        responses=_errors(400),
        summary="List jobs, newest first",
        tags=["tasks"],
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
        who = principal(request, "client")
        flt = JobFilter(status=status, priority=priority, session_id=session, model=model)
        page = await orch.list_jobs(
            flt, limit=limit, cursor=None if cursor is None else int(cursor), principal=who
        )
        return TaskList(items=page.items, next_cursor=page.next_cursor)

    @app.get(
        "/v2/tasks/{job_id}",
        response_model=JobStatusResponse,
        responses=_errors(404),
        summary="Status of one job",
        tags=["tasks"],
    )
    async def get_task(request: Request, job_id: str) -> JobStatusResponse:
        return await orch.status(job_id, principal(request, "client"))

    async def _cancel(request: Request, job_id: str) -> JobStatusResponse:
        return await orch.cancel(job_id, principal(request, "client"))

    app.add_api_route(
        "/v2/tasks/{job_id}",
        _cancel,
        methods=["DELETE"],
        response_model=JobStatusResponse,
        responses=_errors(404),
        summary="Cancel a job (idempotent; a finished job is returned as it is)",
        tags=["tasks"],
        name="cancel_task",
    )
    app.add_api_route(
        "/v2/tasks/{job_id}/cancel",
        _cancel,
        methods=["POST"],
        response_model=JobStatusResponse,
        responses=_errors(404),
        summary="Cancel a job (same as DELETE /v2/tasks/{job_id})",
        tags=["tasks"],
        name="cancel_task_post",
    )

    @app.get(
        "/v2/tasks/{job_id}/events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "SSE: queued, started, token*, metrics*, then end or error",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_errors(400, 404),
        },
        summary="Follow a job's events (SSE); Last-Event-ID resumes",
        tags=["tasks"],
    )
    async def events(
        request: Request,
        job_id: str,
        last_event_id: Annotated[
            str | None, Header(alias="Last-Event-ID", pattern=r"^[0-9]{1,18}$")
        ] = None,
    ) -> StreamingResponse:
        who = principal(request, "client")
        await orch.lookup(job_id, who)
        after = int(last_event_id) if last_event_id else 0
        live = orch.stream_of(job_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if live is None:
            stored = await orch.store.events_after(job_id, after)

            async def replay() -> AsyncIterator[bytes]:
                for ev in stored:
                    yield format_sse(ev)

            return StreamingResponse(replay(), media_type="text/event-stream", headers=headers)

        following = not live.terminal_sent
        if following:
            orch.subscribe(live)

        async def follow() -> AsyncIterator[bytes]:
            try:
                async for ev in live.stream.follow(after, idle_s=_KEEPALIVE_S):
                    yield keepalive() if ev is None else format_sse(ev)
            finally:
                if following:
                    orch.unsubscribe(live)

        return StreamingResponse(follow(), media_type="text/event-stream", headers=headers)

    # -- pools ---------------------------------------------------------------------------

    @app.post(
        "/v2/pools/register",
        response_model=PoolInfo,
        responses=_errors(400, 409, 413),
        openapi_extra=_body("PoolRegistration"),
        summary="Register (or refresh) a pool",
        tags=["pools"],
    )
    async def register_pool(request: Request) -> PoolInfo:
        who = principal(request, "pool")
        reg = PoolRegistration.parse(await read_body(request, limit))
        return orch.register_pool(reg, who)

    @app.post(
        "/v2/pools/{pool_id}/heartbeat",
        response_model=PoolInfo,
        responses=_errors(400, 404, 413),
        openapi_extra=_body("PoolHeartbeat"),
        summary="Heartbeat with the pool's GPU and worker inventory",
        tags=["pools"],
    )
    async def heartbeat(request: Request, pool_id: str) -> PoolInfo:
        who = principal(request, "pool")
        beat = PoolHeartbeat.parse(await read_body(request, limit))
        return orch.heartbeat(pool_id, beat, who)

    @app.delete(
        "/v2/pools/{pool_id}",
        response_model=PoolInfo,
        responses=_errors(404),
        summary="Unregister a pool",
        tags=["pools"],
    )
    async def unregister_pool(request: Request, pool_id: str) -> PoolInfo:
        return orch.unregister_pool(pool_id, principal(request, "pool"))

    @app.get("/v2/pools", response_model=PoolList, responses=_errors(), tags=["pools"])
    async def list_pools(request: Request) -> PoolList:
        """Every registered pool with its derived status."""
        principal(request, "any")
        return PoolList(pools=orch.registry.list())

    @app.get("/v2/pools/{pool_id}", response_model=PoolInfo, responses=_errors(404), tags=["pools"])
    async def get_pool(request: Request, pool_id: str) -> PoolInfo:
        """One pool with its derived status."""
        principal(request, "any")
        return orch.registry.get(pool_id)

    # -- scheduler -----------------------------------------------------------------------

    @app.get("/v2/scheduler", response_model=SchedulerView, responses=_errors(), tags=["scheduler"])
    async def get_scheduler(request: Request) -> SchedulerView:
        """The active scheduling policy."""
        principal(request, "client")
        return loop.view()

    @app.put(
        "/v2/scheduler",
        response_model=SchedulerView,
        responses=_errors(400, 413),
        openapi_extra=_body("SchedulerUpdate"),
        tags=["scheduler"],
    )
    async def put_scheduler(request: Request) -> SchedulerView:
        """Validate a policy and hot-swap it (operators only)."""
        who = principal(request, "client")
        if not who.operator:
            raise OrchestratorError(
                "only operators may change the policy", code=ErrorCode.FORBIDDEN
            )
        update = SchedulerUpdate.parse(await read_body(request, limit))
        return await loop.swap(update)

    # -- operations ----------------------------------------------------------------------

    @app.get(
        "/metrics",
        response_class=Response,
        tags=["ops"],
        responses={
            200: {
                "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            }
        },
    )
    async def prometheus() -> Response:
        """Prometheus metrics (SYSTEM.md §8)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health() -> Health:
        """Liveness: the process serves HTTP."""
        return _health()

    @app.get("/ready", response_model=Health, responses={503: {"model": Health}}, tags=["ops"])
    async def ready() -> JSONResponse:
        """Readiness: recovery is done and the store is open (503 until then)."""
        body = _health()
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if orch.ready else 503)

    def _health() -> Health:
        running = sum(1 for a in orch.active.values() if str(a.job.status) == "running")
        return Health(
            status="ok" if orch.ready else "starting",
            uptime_s=round(max(0.0, orch.clock() - orch.started_at), 3) if orch.ready else 0.0,
            queued=len(orch.queue),
            running=running,
        )

    return app


Handler = Callable[[Request], Awaitable[Response]]
