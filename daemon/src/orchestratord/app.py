"""The daemon's FastAPI app, built by :func:`create_app` (no module-level app, no
singletons): the composition root of the services plus one router per resource.

Request bodies are parsed by the core types' ``parse`` (the same codes and words as the
CLI); the served OpenAPI document declares those bodies and every error status each route
can answer. See :mod:`orchestratord.api` for the routes and the error envelope.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from orchestrator_core import (
    OrchestratorConfig,
    OrchestratorError,
    PoolHeartbeat,
    PoolRegistration,
    TaskSubmitRequest,
)
from orchestrator_core.openai import ChatCompletionRequest, CompletionRequest
from orchestrator_core.scheduling.scheduler import SchedulerRegistry

from orchestratord.api import openai, ops, pools, scheduler, tasks
from orchestratord.api.errors import CorrelationMiddleware, install_error_handlers
from orchestratord.api.fastlane import FastLane, hot_routes
from orchestratord.api.openapi import install_openapi
from orchestratord.auth import Authenticator
from orchestratord.logs import log
from orchestratord.metrics import Metrics
from orchestratord.openai_workers import OpenAIWorkerClient
from orchestratord.orchestrator import Orchestrator
from orchestratord.pool_agents import HttpPoolAgentClient, PoolAgentClient
from orchestratord.postgres_store import PostgresStore
from orchestratord.services.context import Clock
from orchestratord.services.policies import SchedulerUpdate
from orchestratord.sqlite_store import SqliteStore
from orchestratord.store import MemoryStore, Store
from orchestratord.workers import NativeWorkerClient, ProtocolRoutingWorkerClient, WorkerClient

__all__ = ["create_app", "default_store", "default_worker_client", "sqlite_path"]


def sqlite_path(config: OrchestratorConfig) -> Path:
    """Where the SQLite database lives: ``persistence.sqlite_path`` or
    ``<persistence.data_dir>/orchestratord.sqlite3`` (``~`` expanded)."""
    if config.persistence.sqlite_path:
        return Path(config.persistence.sqlite_path).expanduser()
    return Path(config.persistence.data_dir).expanduser() / "orchestratord.sqlite3"


def default_store(config: OrchestratorConfig) -> Store:
    """The store the configuration asks for (SQLite by default; PostgreSQL at
    ``persistence.postgres_dsn`` for ``backend = "postgres"``)."""
    backend = config.persistence.backend
    if backend == "memory":
        return MemoryStore()
    if backend == "postgres":
        dsn = config.persistence.postgres_dsn
        assert dsn is not None  # the configuration requires it for this backend
        return PostgresStore(dsn)
    return SqliteStore(sqlite_path(config))


def default_worker_client() -> WorkerClient:
    """The daemon's worker client: each job goes to the client of its worker's protocol —
    :class:`NativeWorkerClient` for ``"llorch"`` workers, :class:`OpenAIWorkerClient` for
    ``"openai"`` ones (``WorkerInfo.protocol`` from the pool's heartbeats)."""
    return ProtocolRoutingWorkerClient(
        {"llorch": NativeWorkerClient(), "openai": OpenAIWorkerClient()}, default="llorch"
    )


_FOLLOWER_READS = ("GET", "HEAD")
_FOLLOWER_WRITES = {
    ("POST", "/v2/tasks"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
}


def follower_guard(orch: Orchestrator) -> Callable[[str, str], OrchestratorError | None]:
    """A follower serves clients — reads, event streams, submissions (stored, then handed
    to the leader) and cancels (asked of the leader) — and refuses what only the leader may
    do (pools, the scheduler policy) with ``503 NOT_LEADER`` (see :mod:`orchestratord.roles`)."""

    def guard(method: str, path: str) -> OrchestratorError | None:
        if orch.leading or method in _FOLLOWER_READS or (method, path) in _FOLLOWER_WRITES:
            return None
        if path.startswith("/v2/tasks/") and (
            method == "DELETE" or (method == "POST" and path.endswith("/cancel"))
        ):
            return None
        return orch.roles.refuse()

    return guard


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
    """Build the daemon's app for ``config``. The daemon starts and stops with the app's
    lifespan (``app.state.orchestrator`` is the :class:`Orchestrator`). ``scheduler_registry``
    names the policies ``scheduler.policy`` may choose (default: the core's built-ins).
    Raises :class:`ConfigInvalid` for a policy no scheduler is registered for."""

    def registered_fingerprint(endpoint: str) -> str | None:
        return orch.fleet.fingerprint_at(endpoint)  # ``orch`` is built just below

    orch = Orchestrator(
        config,
        store=store if store is not None else default_store(config),
        worker_client=worker_client or default_worker_client(),
        pool_client=pool_client
        or HttpPoolAgentClient.for_config(config, registered_fingerprint=registered_fingerprint),
        clock=clock,
        metrics=metrics,
        scheduler_registry=scheduler_registry,
    )
    auth = Authenticator(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await orch.start()
        log("daemon.start", "serving", mode=config.mode, policy=orch.scheduling.view().policy)
        try:
            yield
        finally:
            await orch.stop()
            log("daemon.stop", "stopped")

    app = FastAPI(
        title="orchestratord",
        version="0.1.0",
        description="llama-orch orchestrator daemon: tasks, SSE events, pools, scheduler.",
        lifespan=lifespan,
    )
    app.state.orchestrator = orch
    app.add_middleware(CorrelationMiddleware)
    install_error_handlers(app)
    install_openapi(
        app,
        bearer=auth.required,
        bodies=[
            TaskSubmitRequest,
            PoolRegistration,
            PoolHeartbeat,
            SchedulerUpdate,
            CompletionRequest,
            ChatCompletionRequest,
        ],
    )
    app.include_router(tasks.router(orch, auth))
    app.include_router(openai.router(orch, auth))
    app.include_router(pools.router(orch, auth))
    app.include_router(scheduler.router(orch, auth))
    app.include_router(ops.router(orch))
    # The hot routes are answered before anything of FastAPI's (its error pages, body limit,
    # routing): the fast lane has its own, with the same contract.
    exact, param = hot_routes(orch, auth)
    app.middleware_stack = FastLane(
        app.build_middleware_stack(), exact=exact, param=param, guard=follower_guard(orch)
    )
    return app
