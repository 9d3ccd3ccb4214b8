"""orchestratord — the llama-orch daemon.

HTTP API and SSE relay, durable state in SQLite or PostgreSQL, the scheduling loop and
dispatch to workers, pools, metrics and JSON logs (contracts: docs/design/README.md; layout:
docs/daemon.md). Build an app with :func:`create_app`; run the daemon with the
``orchestratord`` console script.

The public API is exactly ``__all__``.
"""

from orchestratord.app import create_app, default_store, default_worker_client, sqlite_path
from orchestratord.auth import Authenticator, Principal
from orchestratord.cli import build_config, main
from orchestratord.metrics import Metrics
from orchestratord.openai_workers import OpenAIWorkerClient
from orchestratord.orchestrator import Orchestrator
from orchestratord.pool_agents import HttpPoolAgentClient, PoolAgentClient, PoolRequestFailed
from orchestratord.postgres_store import PostgresStore
from orchestratord.services.admission import estimate_prompt_tokens
from orchestratord.services.jobs import ActiveJob
from orchestratord.services.policies import SchedulerUpdate, SchedulerView
from orchestratord.services.scheduling import SchedulingLoop
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
    "PostgresStore",
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
