"""Errors of orchestrator_core and the one table of stable error codes.

Every error the system reports carries a stable UPPER_SNAKE ``code``; this module holds the
single source of truth that maps each code to its HTTP status (docs/design/errors.md). The daemon
renders errors as the envelope
``{"error": {"code", "message", "details", "correlation_id"}}`` and the CLI maps codes to
exit codes; neither keeps a table of its own.

Hierarchy::

    OrchestratorError                  (code, message, details)
    ├── RequestInvalid                 INVALID_REQUEST / INVALID_PARAMETER, with field errors
    ├── ConfigInvalid                  configuration errors, all of them, with key paths
    ├── IllegalTransition              INVALID_STATE: a job status move the state machine forbids
    ├── JobNotFound / PoolNotFound / ModelNotFound
    ├── PoolConflict                   POOL_CONFLICT
    ├── StaleHeartbeat                 INVALID_REQUEST: heartbeat older than the last one
    └── QueueFull                      QUEUE_FULL
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "ConfigInvalid",
    "ErrorCode",
    "FieldError",
    "IllegalTransition",
    "JobNotFound",
    "ModelNotFound",
    "OrchestratorError",
    "PoolConflict",
    "PoolNotFound",
    "QueueFull",
    "RequestInvalid",
    "StaleHeartbeat",
    "http_status_for",
]


class ErrorCode(StrEnum):
    """Stable error codes. Never rename one: clients and scripts match on them."""

    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_PARAMETER = "INVALID_PARAMETER"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    ROUTE_NOT_FOUND = "ROUTE_NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    POOL_NOT_FOUND = "POOL_NOT_FOUND"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    WORKER_NOT_FOUND = "WORKER_NOT_FOUND"
    POOL_CONFLICT = "POOL_CONFLICT"
    INVALID_STATE = "INVALID_STATE"
    CONTEXT_TOO_LARGE = "CONTEXT_TOO_LARGE"
    QUEUE_FULL = "QUEUE_FULL"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    NO_CAPACITY = "NO_CAPACITY"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    INSUFFICIENT_VRAM = "INSUFFICIENT_VRAM"
    MODEL_INCOMPATIBLE = "MODEL_INCOMPATIBLE"
    DISPATCH_FAILED = "DISPATCH_FAILED"
    WORKER_FAILED = "WORKER_FAILED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    SCHEDULER_ERROR = "SCHEDULER_ERROR"
    INTERNAL = "INTERNAL"
    NOT_LEADER = "NOT_LEADER"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"

    @property
    def http_status(self) -> int | None:
        """HTTP status for this code; ``None`` for codes that only end an SSE stream."""
        return _HTTP_STATUS[self]


# The single source of truth: code -> HTTP status (docs/design/errors.md).
_HTTP_STATUS: Mapping[ErrorCode, int | None] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_PARAMETER: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.ROUTE_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.POOL_NOT_FOUND: 404,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.WORKER_NOT_FOUND: 404,
    ErrorCode.POOL_CONFLICT: 409,
    ErrorCode.INVALID_STATE: 409,
    ErrorCode.CONTEXT_TOO_LARGE: 400,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.NO_CAPACITY: 503,
    ErrorCode.POOL_UNAVAILABLE: 503,
    ErrorCode.INSUFFICIENT_VRAM: 409,
    ErrorCode.MODEL_INCOMPATIBLE: 409,
    ErrorCode.DISPATCH_FAILED: 502,
    ErrorCode.WORKER_FAILED: 502,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.CANCELLED: None,
    ErrorCode.SCHEDULER_ERROR: 500,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_LEADER: 503,
    ErrorCode.STORE_UNAVAILABLE: 503,
}


def http_status_for(code: ErrorCode | str) -> int:
    """HTTP status of ``code``; codes without one (``CANCELLED``) and unknown codes give 500."""
    try:
        status = ErrorCode(code).http_status
    except ValueError:
        return 500
    return 500 if status is None else status


class OrchestratorError(Exception):
    """Base of every error with a stable code. ``str(err)`` is ``"CODE: message"``."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    @property
    def http_status(self) -> int:
        """HTTP status from the code table."""
        return http_status_for(self.code)

    def to_envelope(self, correlation_id: str | None = None) -> dict[str, Any]:
        """The error envelope (docs/design/errors.md), ready to serialise as JSON."""
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        body["details"] = self.details
        if correlation_id is not None:
            body["correlation_id"] = correlation_id
        return {"error": body}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad field: its dotted path, a stable code and a message that names the field."""

    field: str
    code: ErrorCode
    message: str

    def to_dict(self) -> dict[str, str]:
        """Plain-dict form used in error envelope ``details``."""
        return {"field": self.field, "code": str(self.code), "message": self.message}


class RequestInvalid(OrchestratorError):
    """A request failed validation; ``errors`` lists every bad field, each with its code.

    The error's own code is the code of the first field error (``INVALID_REQUEST`` for a
    missing or malformed field, ``INVALID_PARAMETER`` for a value out of range).
    """

    code = ErrorCode.INVALID_PARAMETER

    def __init__(self, errors: Sequence[FieldError]) -> None:
        if not errors:
            raise ValueError("RequestInvalid needs at least one field error")
        self.errors = list(errors)
        message = "; ".join(e.message for e in self.errors)
        super().__init__(
            message,
            code=self.errors[0].code,
            details={"fields": [e.to_dict() for e in self.errors]},
        )


class ConfigInvalid(OrchestratorError):
    """Configuration is malformed or invalid. ``problems`` lists every error, each naming its
    key path and the bad value (``queue.capacity: must be -1 or >= 1, got 0``)."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, problems: Sequence[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems), details={"problems": self.problems})


class IllegalTransition(OrchestratorError):
    """A job status move the state machine of :mod:`orchestrator_core.jobs` forbids, e.g. out of
    a terminal state."""

    code = ErrorCode.INVALID_STATE

    def __init__(self, job_id: str, current: str, target: str) -> None:
        self.job_id, self.current, self.target = job_id, current, target
        super().__init__(
            f"job {job_id}: cannot move from {current} to {target}",
            details={"job_id": job_id, "from": current, "to": target},
        )


class JobNotFound(OrchestratorError):
    """No job with this id."""

    code = ErrorCode.JOB_NOT_FOUND

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found", details={"job_id": job_id})


class PoolNotFound(OrchestratorError):
    """No pool with this id."""

    code = ErrorCode.POOL_NOT_FOUND

    def __init__(self, pool_id: str) -> None:
        self.pool_id = pool_id
        super().__init__(f"pool {pool_id} not found", details={"pool_id": pool_id})


class ModelNotFound(OrchestratorError):
    """No model with this reference or alias in the catalog or on any pool."""

    code = ErrorCode.MODEL_NOT_FOUND

    def __init__(self, model_ref: str) -> None:
        self.model_ref = model_ref
        super().__init__(f"model {model_ref!r} not found", details={"model_ref": model_ref})


class PoolConflict(OrchestratorError):
    """A live pool already holds this id with a different endpoint."""

    code = ErrorCode.POOL_CONFLICT

    def __init__(self, pool_id: str, existing: str, requested: str) -> None:
        self.pool_id = pool_id
        super().__init__(
            f"pool {pool_id} is already registered at {existing}; refusing {requested}",
            details={"pool_id": pool_id, "existing_endpoint": existing},
        )


class StaleHeartbeat(OrchestratorError):
    """A heartbeat whose timestamp is older than the last accepted one, or too far off."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, pool_id: str, reason: str) -> None:
        self.pool_id = pool_id
        super().__init__(f"pool {pool_id}: stale heartbeat: {reason}", details={"pool_id": pool_id})


class QueueFull(OrchestratorError):
    """The queue is at capacity and the full-queue policy refused the job."""

    code = ErrorCode.QUEUE_FULL

    def __init__(self, capacity: int, retry_after_s: int = 1) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        super().__init__(
            f"queue is full ({capacity} jobs); retry later",
            details={"capacity": capacity, "retry_after_s": retry_after_s},
        )
