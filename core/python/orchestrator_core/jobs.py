"""Jobs: priority, status with its legal transitions, sampling parameters and the job itself.

The state machine (docs/design/http-api.md, *Job statuses*)::

    queued ──► running ──► completed
      │  ▲        ├──────► failed
      │  └─retry──┤
      ├──────────►└──────► cancelled
      ├──► cancelled
      └──► failed        (expired, dropped by the full-queue policy)

Terminal states (completed, failed, cancelled) never change; any other move raises
:class:`~orchestrator_core.errors.IllegalTransition`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from orchestrator_core.errors import ErrorCode, IllegalTransition

if TYPE_CHECKING:
    from orchestrator_core.api import TaskSubmitRequest

__all__ = [
    "Job",
    "JobKind",
    "JobParams",
    "JobStatus",
    "Priority",
    "new_job_id",
    "prompt_sha256",
]


class Priority(StrEnum):
    """Job priority: interactive jobs run before batch jobs."""

    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """0 for interactive, 1 for batch: lower runs first."""
        return 0 if self is Priority.INTERACTIVE else 1


class JobKind(StrEnum):
    """Which front door a job came through, hence how its prompt is stored and its output
    answered: ``task`` (``POST /v2/tasks``; the prompt is text), ``completion``
    (``POST /v1/completions``; the prompt is text) or ``chat`` (``POST /v1/chat/completions``;
    the stored prompt is the canonical JSON of the messages, see
    :meth:`orchestrator_core.openai.ChatCompletionRequest.messages_json`)."""

    TASK = "task"
    COMPLETION = "completion"
    CHAT = "chat"


class JobStatus(StrEnum):
    """Lifecycle status of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed and cancelled: no move leaves these."""
        return self in _TERMINAL

    def can_move_to(self, target: JobStatus) -> bool:
        """Whether the state machine allows the move ``self -> target``."""
        return target in _LEGAL_MOVES[self]


_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

_LEGAL_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def new_job_id() -> str:
    """An unguessable job id: ``job-`` + 32 hex digits of a random UUIDv4."""
    return "job-" + uuid.uuid4().hex


def prompt_sha256(prompt: str) -> str:
    """Hex SHA-256 of the UTF-8 prompt: what remains of a prompt once its job is finished."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class JobParams:
    """Sampling parameters of a job (validated at the API boundary by TaskSubmitRequest, or
    by the OpenAI-compatible requests of :mod:`orchestrator_core.openai`).

    The one list of sampling fields and their defaults: code that moves them between a
    request, a store and a worker goes through :meth:`from_mapping` and :meth:`to_dict`
    instead of copying them field by field.
    """

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> JobParams:
        """The sampling fields found in ``data`` (a request's ``model_dump()``, a decoded JSON
        object); other keys are ignored and missing ones take their defaults. ``stop`` may
        be any sequence of strings."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if values.get("stop") is not None:
            values["stop"] = tuple(values["stop"])
        else:
            values.pop("stop", None)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The sampling fields as JSON-ready data (``stop`` as a list); a subclass adding
        fields still gives only these."""
        out = {f.name: getattr(self, f.name) for f in fields(JobParams)}
        out["stop"] = list(self.stop)
        return out


@dataclass(slots=True, eq=False)
class Job:
    """One inference job. Status changes only through :meth:`transition` and its helpers.

    Times are Unix seconds (floats) supplied by the caller; the library reads no clock.
    ``prompt`` becomes ``None`` once the job is finished and only ``prompt_hash`` remains.
    ``kind`` says which API submitted it; a ``chat`` job's ``prompt`` is the JSON of its
    messages.
    """

    job_id: str
    model_ref: str
    prompt: str | None
    params: JobParams
    priority: Priority = Priority.INTERACTIVE
    status: JobStatus = JobStatus.QUEUED
    session_id: str | None = None
    tenant_id: str | None = None
    created_at: float = 0.0
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    pool_id: str | None = None
    worker_id: str | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    prompt_hash: str = field(default="")
    kind: JobKind = JobKind.TASK

    def __post_init__(self) -> None:
        if not self.prompt_hash and self.prompt is not None:
            self.prompt_hash = prompt_sha256(self.prompt)

    @classmethod
    def from_request(
        cls,
        req: TaskSubmitRequest,
        *,
        now: float,
        job_id: str | None = None,
        tenant_id: str | None = None,
    ) -> Job:
        """Build a queued job from a validated request (validates it again, cheaply)."""
        req.validate()
        return cls(
            job_id=job_id or new_job_id(),
            model_ref=req.model,
            prompt=req.prompt,
            params=JobParams.from_mapping(req.model_dump()),
            priority=Priority(req.priority),
            session_id=req.session_id,
            tenant_id=tenant_id,
            created_at=now,
            queued_at=now,
        )

    @property
    def is_terminal(self) -> bool:
        """True once the job is completed, failed or cancelled."""
        return self.status.is_terminal

    def transition(self, target: JobStatus, *, now: float) -> None:
        """Move to ``target`` or raise :class:`IllegalTransition`. Stamps the matching time."""
        if not self.status.can_move_to(target):
            raise IllegalTransition(self.job_id, self.status, target)
        self.status = target
        if target is JobStatus.RUNNING:
            self.started_at = now
            self.attempts += 1
        elif target is JobStatus.QUEUED:
            self.queued_at = now
            self.started_at = None
            self.pool_id = self.worker_id = None
        else:
            self.finished_at = now
            self.prompt = None  # docs/design/persistence.md: keep only the hash

    def start(self, *, pool_id: str, worker_id: str, now: float) -> None:
        """queued -> running on ``worker_id``; counts an attempt."""
        self.transition(JobStatus.RUNNING, now=now)
        self.pool_id, self.worker_id = pool_id, worker_id

    def complete(self, *, now: float) -> None:
        """running -> completed."""
        self.transition(JobStatus.COMPLETED, now=now)

    def fail(self, code: ErrorCode, message: str, *, now: float) -> None:
        """queued|running -> failed with a stable error code."""
        self.transition(JobStatus.FAILED, now=now)
        self.error_code, self.error_message = code, message

    def cancel(self, *, now: float) -> None:
        """queued|running -> cancelled."""
        self.transition(JobStatus.CANCELLED, now=now)
        self.error_code, self.error_message = ErrorCode.CANCELLED, "cancelled"

    def requeue(self, *, now: float) -> None:
        """running -> queued, for a retry before the first token."""
        self.transition(JobStatus.QUEUED, now=now)
