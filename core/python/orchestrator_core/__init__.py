"""orchestrator_core — the shared, pure logic of llama-orch.

Jobs and their state machine, the job queue, the pool registry, API request/response/error
types and the TOML configuration (and, in their own modules, the schedulers and the Rhai
policy engine). It performs no network, database or CLI work: the daemon ``orchestratord``
and the client ``llorch`` build on it.

The public API is exactly ``__all__``.
"""

from orchestrator_core.api import (
    ErrorBody,
    ErrorEnvelope,
    JobError,
    JobStatusResponse,
    TaskSubmitRequest,
    TaskSubmitResponse,
    WorkerSpawnRequest,
    WorkerSpawnResponse,
    json_schemas,
)
from orchestrator_core.config import OrchestratorConfig, load_config
from orchestrator_core.errors import (
    ConfigInvalid,
    ErrorCode,
    FieldError,
    IllegalTransition,
    JobNotFound,
    ModelNotFound,
    OrchestratorError,
    PoolConflict,
    PoolNotFound,
    QueueFull,
    RequestInvalid,
    StaleHeartbeat,
    http_status_for,
)
from orchestrator_core.jobs import Job, JobParams, JobStatus, Priority, new_job_id, prompt_sha256
from orchestrator_core.pools import (
    GpuInfo,
    InMemoryPoolRegistry,
    PoolHeartbeat,
    PoolInfo,
    PoolRegistration,
    PoolRegistry,
    PoolStatus,
    WorkerInfo,
    WorkerStatus,
)
from orchestrator_core.queues import (
    EnqueueResult,
    FairnessHook,
    FifoFairness,
    FullQueuePolicy,
    InMemoryJobQueue,
    JobQueue,
    WeightedFairness,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigInvalid",
    "EnqueueResult",
    "ErrorBody",
    "ErrorCode",
    "ErrorEnvelope",
    "FairnessHook",
    "FieldError",
    "FifoFairness",
    "FullQueuePolicy",
    "GpuInfo",
    "IllegalTransition",
    "InMemoryJobQueue",
    "InMemoryPoolRegistry",
    "Job",
    "JobError",
    "JobNotFound",
    "JobParams",
    "JobQueue",
    "JobStatus",
    "JobStatusResponse",
    "ModelNotFound",
    "OrchestratorConfig",
    "OrchestratorError",
    "PoolConflict",
    "PoolHeartbeat",
    "PoolInfo",
    "PoolNotFound",
    "PoolRegistration",
    "PoolRegistry",
    "PoolStatus",
    "Priority",
    "QueueFull",
    "RequestInvalid",
    "StaleHeartbeat",
    "TaskSubmitRequest",
    "TaskSubmitResponse",
    "WeightedFairness",
    "WorkerInfo",
    "WorkerSpawnRequest",
    "WorkerSpawnResponse",
    "WorkerStatus",
    "__version__",
    "http_status_for",
    "json_schemas",
    "load_config",
    "new_job_id",
    "prompt_sha256",
]
