"""The job queue: interactive before batch, FIFO within a priority, bounded, with promotion.

:class:`JobQueue` is the protocol (enqueue, dequeue, peek, plus remove, cancel, len and
position). :class:`InMemoryJobQueue` implements it as a thin adapter over the scheduling
package's :class:`~orchestrator_core.scheduling.queue_index.QueueIndex` — the same index the
cluster state keeps its queued jobs in — so the order, the positions and the promotion of
aged batch jobs have one implementation, and over its capacity rule
(:func:`~orchestrator_core.scheduling.admission.make_room`), shared with the daemon's
admission. Every operation is O(log n) of the queue length:

* the order comes from a :class:`~orchestrator_core.scheduling.QueueOrder` (class 0 is
  interactive and promoted batch, class 1 batch; within a class, the queueing time or a
  fair-share virtual time); a job's position is its index in its class;
* any job is found by id in O(1), so removing a job from the middle of a million-job queue
  does not scan it;
* the batch jobs not promoted are kept oldest first, for ``drop-oldest-batch`` and for
  promotion.

Promotion (starvation guard): a batch job that has waited ``promote_after_s`` or longer is
moved to the interactive class, keeping its arrival order, so it runs before interactive
jobs that arrived after it. Promotion is applied lazily, with the queue's clock, at the start
of every operation that reads the order; each job is promoted at most once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from orchestrator_core.errors import ErrorCode
from orchestrator_core.jobs import Job, JobStatus, Priority
from orchestrator_core.scheduling.admission import (
    UNBOUNDED,
    AdmissionLimits,
    FullQueuePolicy,
    Refused,
    make_room,
)
from orchestrator_core.scheduling.ordering import PriorityOrder, QueueOrder
from orchestrator_core.scheduling.queue_index import QueueIndex

__all__ = [
    "UNBOUNDED",
    "EnqueueResult",
    "FullQueuePolicy",
    "InMemoryJobQueue",
    "JobQueue",
]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """Outcome of an enqueue: the new job's position and the job dropped to make room, if any."""

    position: int
    dropped: Job | None = None


@runtime_checkable
class JobQueue(Protocol):
    """A priority queue of jobs."""

    def enqueue(self, job: Job) -> EnqueueResult:
        """Add a queued job; raise :class:`QueueFull` if the full-queue policy refuses it."""
        ...

    def dequeue(self) -> Job | None:
        """Remove and return the next job, or ``None`` if the queue is empty."""
        ...

    def peek(self) -> Job | None:
        """The next job without removing it, or ``None``."""
        ...

    def remove(self, job_id: str) -> Job:
        """Take a job out without changing its status (e.g. to dispatch it out of order)."""
        ...

    def cancel(self, job_id: str, *, now: float) -> Job:
        """Take a job out and mark it cancelled."""
        ...

    def position(self, job_id: str) -> int:
        """Number of jobs ahead of this one (0 = next); :class:`JobNotFound` if absent."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, job_id: object) -> bool: ...

    def __iter__(self) -> Iterator[Job]:
        """Jobs in dequeue order."""
        ...


class InMemoryJobQueue:
    """In-memory :class:`JobQueue`; every operation O(log n). See the module docstring.

    ``capacity`` is the maximum number of queued jobs (``-1`` = unbounded). ``order`` decides
    which job goes first — the same :class:`~orchestrator_core.scheduling.QueueOrder` plugins
    the schedulers use (``PriorityOrder`` by default, ``FairShareOrder`` for weighted fairness
    between tenants or sessions, ``FifoOrder``); ``promote_after_s`` is only used to build the
    default ``PriorityOrder``. ``clock`` returns Unix seconds and is only used for promotion
    (and to date a dropped job's failure).
    """

    def __init__(
        self,
        capacity: int = 100,
        *,
        full_policy: FullQueuePolicy | str = FullQueuePolicy.REJECT,
        order: QueueOrder | None = None,
        promote_after_s: float | None = 300.0,
        clock: Clock = time.time,
        retry_after_s: int = 1,
    ) -> None:
        _check_capacity(capacity)
        self._limits = AdmissionLimits(capacity, FullQueuePolicy(full_policy), retry_after_s)
        self._index = QueueIndex(order if order is not None else PriorityOrder(promote_after_s))
        self._clock = clock

    # -- settings --------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Maximum number of queued jobs (``-1`` = unbounded)."""
        return self._limits.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        _check_capacity(value)
        self._limits = dataclasses.replace(self._limits, capacity=value)

    @property
    def full_policy(self) -> FullQueuePolicy:
        """What a full queue does with a new job."""
        return self._limits.full_policy

    @full_policy.setter
    def full_policy(self, value: FullQueuePolicy | str) -> None:
        self._limits = dataclasses.replace(self._limits, full_policy=FullQueuePolicy(value))

    @property
    def retry_after_s(self) -> int:
        """The retry hint of a :class:`QueueFull` refusal, in seconds."""
        return self._limits.retry_after()

    @retry_after_s.setter
    def retry_after_s(self, value: int) -> None:
        self._limits = dataclasses.replace(self._limits, retry_after_s=value)

    @property
    def order(self) -> QueueOrder:
        """The queue order."""
        return self._index.order

    @property
    def promote_after_s(self) -> float | None:
        """Age at which a batch job is promoted (from the order; ``None`` = never)."""
        return self._index.order.promote_after_s

    # -- internals -----------------------------------------------------------------------

    def _promote_due(self) -> None:
        if self._index.order.promote_after_s is not None:
            self._index.promote_due(self._clock())

    def _take(self, job_id: str, *, served: bool) -> Job:
        return self._index.remove(job_id, served=served).job

    # -- protocol ------------------------------------------------------------------------

    def enqueue(self, job: Job) -> EnqueueResult:
        """Add ``job`` (status must be queued). See :class:`FullQueuePolicy` for a full queue."""
        if job.status is not JobStatus.QUEUED:
            raise ValueError(f"job {job.job_id}: only queued jobs can be enqueued ({job.status})")
        if job.job_id in self._index:
            raise ValueError(f"job {job.job_id} is already queued")
        self._promote_due()
        room = make_room(self._index, self._limits)
        if isinstance(room, Refused):
            raise room.error
        dropped: Job | None = None
        if room is not None:
            dropped = self._take(room.job_id, served=False)
            dropped.fail(
                ErrorCode.QUEUE_FULL,
                "dropped from a full queue to make room (drop-oldest-batch)",
                now=self._clock(),
            )
        self._index.add(job, job.model_ref)
        # Promote a job that was already old when it arrived (e.g. restored after a restart).
        self._promote_due()
        return EnqueueResult(self._index.position(job.job_id), dropped)

    def dequeue(self) -> Job | None:
        """Remove and return the next job, or ``None``."""
        self._promote_due()
        head = self._index.first()
        return None if head is None else self._take(head.job_id, served=True)

    def peek(self) -> Job | None:
        """The next job, or ``None``."""
        self._promote_due()
        head = self._index.first()
        return None if head is None else head.job

    def remove(self, job_id: str) -> Job:
        """Take ``job_id`` out without changing its status; :class:`JobNotFound` if absent."""
        return self._take(job_id, served=True)

    def cancel(self, job_id: str, *, now: float) -> Job:
        """Take ``job_id`` out and mark it cancelled."""
        job = self._take(job_id, served=False)
        job.cancel(now=now)
        return job

    def get(self, job_id: str) -> Job | None:
        """The queued job with this id, or ``None``."""
        qj = self._index.get(job_id)
        return None if qj is None else qj.job

    def position(self, job_id: str) -> int:
        """Jobs ahead of ``job_id`` (0 = next)."""
        self._promote_due()
        return self._index.position(job_id)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._index

    def __iter__(self) -> Iterator[Job]:
        self._promote_due()
        for qj in self._index.ordered():
            yield qj.job

    def head(self, n: int) -> list[Job]:
        """The first ``n`` jobs in dequeue order, in O(n + log len)."""
        self._promote_due()
        return [qj.job for qj in self._index.ordered(n)]

    def depth(self, priority: Priority) -> int:
        """Queued jobs submitted with ``priority`` (promoted batch jobs still count as batch)."""
        return self._index.count(priority)


def _check_capacity(capacity: int) -> None:
    if capacity != UNBOUNDED and capacity < 1:
        raise ValueError(f"capacity: must be -1 or >= 1, got {capacity}")
