"""Admission: may a new job enter the queue, and at what cost — a pure decision.

:func:`admit` answers for a job about to be queued in a
:class:`~orchestrator_core.scheduling.state.ClusterState`, without changing anything and
without I/O, in O(log n):

1. the tenant's queued-jobs quota (``max_queued``): a tenant already holding that many
   queued jobs is refused with ``QUOTA_EXCEEDED``;
2. the queue's capacity and full-queue policy (:func:`make_room`): a full queue refuses the
   job with ``QUEUE_FULL`` (``reject``), or makes room by dropping the batch job queued
   earliest that is not promoted (``drop-oldest-batch``; refused if there is none).

Admissions in flight — decided but not yet in the state, because the daemon adds a job only
once it is durably stored — are passed as ``reserved`` (and per tenant as
``reserved_by_tenant``): they count against the capacity and the quotas, so concurrent
admissions never overshoot them. :class:`~orchestrator_core.queues.InMemoryJobQueue` applies
the same :func:`make_room`: there is one capacity rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from orchestrator_core.errors import ErrorCode, OrchestratorError, QueueFull
from orchestrator_core.jobs import Job
from orchestrator_core.scheduling.views import QueuedJob

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig
    from orchestrator_core.scheduling.state import ClusterState

__all__ = [
    "UNBOUNDED",
    "AdmissionLimits",
    "AdmissionQueue",
    "Admitted",
    "FullQueuePolicy",
    "Refused",
    "admit",
    "make_room",
]

UNBOUNDED = -1
"""Capacity value meaning "no limit"."""


class FullQueuePolicy(StrEnum):
    """What to do when a job arrives at a full queue."""

    REJECT = "reject"
    """Refuse the new job with QUEUE_FULL (HTTP 429)."""
    DROP_OLDEST_BATCH = "drop-oldest-batch"
    """Drop the oldest queued batch job (it fails with QUEUE_FULL); reject if there is none."""


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """What admission enforces: the queue's ``capacity`` (``-1`` = unbounded) and
    ``full_policy``, the ``retry_after_s`` hint of a refusal (whole seconds are sent:
    rounded up), and ``max_queued``: tenant id -> queued-jobs quota, for the tenants that
    have one."""

    capacity: int
    full_policy: FullQueuePolicy
    retry_after_s: float
    max_queued: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: OrchestratorConfig) -> AdmissionLimits:
        """The limits of ``[queue]`` (capacity, full policy, retry hint) and of
        ``tenants[].max_queued``."""
        return cls(
            capacity=config.queue.capacity,
            full_policy=FullQueuePolicy(config.queue.full_policy),
            retry_after_s=config.queue.retry_after_s,
            max_queued={
                t.tenant_id: t.max_queued for t in config.tenants if t.max_queued is not None
            },
        )

    def retry_after(self) -> int:
        """The retry hint in whole seconds (``Retry-After``), rounded up."""
        return math.ceil(self.retry_after_s)


@dataclass(frozen=True, slots=True)
class Admitted:
    """The job may be queued.

    ``position``: where it will stand once added (0 = next), the ``dropped`` job gone —
    exact for the priority and FIFO orders; for fair share (whose place depends on the
    tenant's history) the tail of the job's order class. Admissions in flight are not
    counted. ``dropped``: the id of the queued batch job to drop to make room for it
    (``drop-oldest-batch``), or ``None``.
    """

    position: int
    dropped: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The job may not be queued: ``error`` is a :class:`~orchestrator_core.errors.QueueFull`
    (``QUEUE_FULL``, with its ``retry_after_s``) or an ``OrchestratorError`` with
    ``QUOTA_EXCEEDED``."""

    error: OrchestratorError


class AdmissionQueue(Protocol):
    """What the capacity rule reads of a queue."""

    def __len__(self) -> int: ...

    def oldest_unpromoted_batch(self, now: float | None = None) -> QueuedJob | None:
        """The ``drop-oldest-batch`` victim, or ``None``."""
        ...


def make_room(
    queue: AdmissionQueue,
    limits: AdmissionLimits,
    *,
    reserved: int = 0,
    now: float | None = None,
) -> QueuedJob | Refused | None:
    """The capacity rule: ``None`` if the queue (with ``reserved`` admissions in flight)
    has room; else the job to drop (``drop-oldest-batch``: the batch job queued earliest
    that is not promoted — nor due for promotion at ``now`` — if any); else a refusal."""
    capacity = limits.capacity
    if capacity == UNBOUNDED or len(queue) + reserved < capacity:
        return None
    if limits.full_policy is FullQueuePolicy.DROP_OLDEST_BATCH:
        victim = queue.oldest_unpromoted_batch(now)
        if victim is not None:
            return victim
    return Refused(QueueFull(capacity, limits.retry_after()))


def admit(
    state: ClusterState,
    job: Job,
    limits: AdmissionLimits,
    *,
    reserved: int = 0,
    reserved_by_tenant: Mapping[str, int] | None = None,
) -> Admitted | Refused:
    """Whether ``job`` (about to be added to ``state``) may be queued: the tenant's quota
    first, then the capacity and full-queue policy (see the module docstring). Pure: the
    caller drops the ``dropped`` job and adds ``job`` itself. Jobs due for promotion at the
    job's ``queued_at`` count as promoted (they are never dropped)."""
    tenant = job.tenant_id
    quota = None if tenant is None else limits.max_queued.get(tenant)
    if tenant is not None and quota is not None:
        queued = state.tenant_queued(tenant) + (reserved_by_tenant or {}).get(tenant, 0)
        if queued >= quota:
            retry = limits.retry_after()
            return Refused(
                OrchestratorError(
                    f"tenant {tenant} has {quota} jobs queued (its quota); retry later",
                    code=ErrorCode.QUOTA_EXCEEDED,
                    details={"tenant": tenant, "max_queued": quota, "retry_after_s": retry},
                )
            )
    room = make_room(state, limits, reserved=reserved, now=job.queued_at)
    if isinstance(room, Refused):
        return room
    position = state.position_of_new(job.priority, job.queued_at, dropping=room)
    return Admitted(position, None if room is None else room.job_id)
