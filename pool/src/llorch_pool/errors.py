"""Errors raised by the pool agent and the simulator, each with a stable code.

All of them derive from :class:`orchestrator_core.errors.OrchestratorError`, so the HTTP layer
renders them with the one error envelope of docs/design/errors.md and the HTTP status of the core's
code table. Hierarchy::

    OrchestratorError (orchestrator_core)
    ├── InsufficientVram      INSUFFICIENT_VRAM  409  the model does not fit the GPU's free VRAM now
    ├── ModelIncompatible     MODEL_INCOMPATIBLE 409  this pool can never start the model there
    ├── WorkerNotFound        WORKER_NOT_FOUND   404  no worker with this id
    ├── WorkerStateInvalid    INVALID_STATE      409  e.g. stopping a static (external) worker
    ├── EngineBusy            POOL_UNAVAILABLE   503  an engine has no free slot (or refuses work)
    └── EngineLaunchFailed    WORKER_FAILED      502  an engine process died or never got ready
"""

from __future__ import annotations

from orchestrator_core.errors import ErrorCode, OrchestratorError

__all__ = [
    "EngineBusy",
    "EngineLaunchFailed",
    "InsufficientVram",
    "ModelIncompatible",
    "WorkerNotFound",
    "WorkerStateInvalid",
]


class InsufficientVram(OrchestratorError):
    """The model needs more VRAM than the GPU has free right now (an eviction could help)."""

    code = ErrorCode.INSUFFICIENT_VRAM

    def __init__(self, model_ref: str, gpu_id: str, needed: int, free: int) -> None:
        super().__init__(
            f"model {model_ref!r} needs {needed} bytes of VRAM; gpu {gpu_id} has {free} free",
            details={
                "model_ref": model_ref,
                "gpu_id": gpu_id,
                "vram_needed_bytes": needed,
                "vram_free_bytes": free,
            },
        )


class ModelIncompatible(OrchestratorError):
    """This pool can never run the model on that GPU: it cannot launch the model at all, or
    the model is larger than the GPU's total VRAM. Waiting or evicting will not help."""

    code = ErrorCode.MODEL_INCOMPATIBLE

    def __init__(
        self,
        model_ref: str,
        reason: str,
        *,
        gpu_id: str | None = None,
        vram_needed_bytes: int | None = None,
        vram_total_bytes: int | None = None,
    ) -> None:
        details: dict[str, object] = {"model_ref": model_ref, "reason": reason}
        if gpu_id is not None:
            details["gpu_id"] = gpu_id
        if vram_needed_bytes is not None:
            details["vram_needed_bytes"] = vram_needed_bytes
        if vram_total_bytes is not None:
            details["vram_total_bytes"] = vram_total_bytes
        super().__init__(f"model {model_ref!r}: {reason}", details=details)


class WorkerNotFound(OrchestratorError):
    """No worker with this id on this pool."""

    code = ErrorCode.WORKER_NOT_FOUND

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id} not found", details={"worker_id": worker_id})


class WorkerStateInvalid(OrchestratorError):
    """The worker cannot do that in its current state (e.g. a static worker cannot be
    stopped by the pool, which did not start it)."""

    code = ErrorCode.INVALID_STATE

    def __init__(self, worker_id: str, reason: str) -> None:
        super().__init__(f"worker {worker_id}: {reason}", details={"worker_id": worker_id})


class EngineBusy(OrchestratorError):
    """An engine refuses a job: every slot is taken, it is still loading, or a simulated
    fault says so. Transient: the caller may retry elsewhere or later."""

    code = ErrorCode.POOL_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, details={"retry_after_s": retry_after_s})


class EngineLaunchFailed(OrchestratorError):
    """An engine process exited or did not become ready in time."""

    code = ErrorCode.WORKER_FAILED

    def __init__(self, worker_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"worker {worker_id}: {reason}", details={"worker_id": worker_id})
