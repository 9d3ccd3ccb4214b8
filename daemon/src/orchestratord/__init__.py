"""orchestratord — the llama-orch daemon.

HTTP API and SSE relay (SYSTEM.md §3), durable state in SQLite (§5), the scheduling loop and
dispatch to workers, pools, metrics and JSON logs. Build an app with :func:`create_app`;
run the daemon with the ``orchestratord`` console script.

The public API is exactly ``__all__``.
"""

from orchestratord.app import create_app, default_store, default_worker_client, sqlite_path
from orchestratord.auth import Authenticator, Principal
from orchestratord.cli import build_config, main
from orchestratord.metrics import Metrics
from orchestratord.openai_workers import OpenAIWorkerClient
from orchestratord.pool_agents import HttpPoolAgentClient, PoolAgentClient, PoolRequestFailed
from orchestratord.runtime import ActiveJob, Orchestrator, estimate_prompt_tokens
from orchestratord.scheduling_loop import SchedulerUpdate, SchedulerView, SchedulingLoop
from orchestratord.sqlite_store import SqliteStore
from orchestratord.store import JobFilter, JobPage, JobRow, MemoryStore, Store, StoredEvent
from orchestratord.streams import JobStream, format_sse
from orchestratord.workers import (
    ExecuteRequest,
    NativeWorkerClient,
    ProtocolRoutingWorkerClient,
    WorkerClient,
    WorkerError,
    WorkerEvent,
    WorkerLost,
    WorkerUnreachable,
)

__version__ = "0.1.0"

__all__ = [
    "ActiveJob",
    "Authenticator",
    "ExecuteRequest",
    "HttpPoolAgentClient",
    "JobFilter",
    "JobPage",
    "JobRow",
    "JobStream",
    "MemoryStore",
    "Metrics",
    "NativeWorkerClient",
    "OpenAIWorkerClient",
    "Orchestrator",
    "PoolAgentClient",
    "PoolRequestFailed",
    "Principal",
    "ProtocolRoutingWorkerClient",
    "SchedulerUpdate",
    "SchedulerView",
    "SchedulingLoop",
    "SqliteStore",
    "Store",
    "StoredEvent",
    "WorkerClient",
    "WorkerError",
    "WorkerEvent",
    "WorkerLost",
    "WorkerUnreachable",
    "__version__",
    "build_config",
    "create_app",
    "default_store",
    "default_worker_client",
    "estimate_prompt_tokens",
    "format_sse",
    "main",
    "sqlite_path",
]
