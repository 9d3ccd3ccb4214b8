"""The job queue: interactive before batch, FIFO within a priority, bounded, with promotion.

:class:`JobQueue` is the protocol (seed ORCH-CORE-001: enqueue, dequeue, peek, plus remove,
cancel, len and position). :class:`InMemoryJobQueue` implements it with every operation in
O(log n) of the queue length:

* one sorted list of ``(class, tag, seq)`` keys, packed into one int, orders the queue; the
  class and tag come from a :class:`~orchestrator_core.scheduling.QueueOrder` — the same
  plugins the schedulers use, so there is one definition of priority, promotion and fair
  share (class 0 is interactive and promoted batch, class 1 batch; the tag is the queueing
  time, or a fair-share virtual time); a key's index is the job's position;
* a dict ``job_id -> entry`` finds any job in O(1), so removing a job from the middle of a
  million-job queue does not scan it;
* an ordered dict of not-yet-promoted batch jobs, oldest first, finds the oldest batch job
  (for ``drop-oldest-batch``) and the jobs due for promotion in O(1) each.

Promotion (starvation guard): a batch job that has waited ``promote_after_s`` or longer is
moved to the interactive class, keeping its arrival order, so it runs before interactive
jobs that arrived after it. Promotion is applied lazily, with the queue's clock, at the start
of every operation; each job is promoted at most once.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from sortedcontainers import SortedList

from orchestrator_core.errors import ErrorCode, JobNotFound, QueueFull
from orchestrator_core.jobs import Job, JobStatus, Priority
from orchestrator_core.scheduling.ordering import PriorityOrder, QueueOrder
from orchestrator_core.scheduling.views import QueuedJob

__all__ = [
    "UNBOUNDED",
    "EnqueueResult",
    "FullQueuePolicy",
    "InMemoryJobQueue",
    "JobQueue",
]

UNBOUNDED = -1
"""Capacity value meaning "no limit"."""

Clock = Callable[[], float]


class FullQueuePolicy(StrEnum):
    """What to do when a job arrives at a full queue."""

    REJECT = "reject"
    """Refuse the new job with QUEUE_FULL (HTTP 429)."""
    DROP_OLDEST_BATCH = "drop-oldest-batch"
    """Drop the oldest queued batch job (it fails with QUEUE_FULL); reject if there is none."""


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """Outcome of an enqueue: the new job's position and the job dropped to make room, if any."""

    position: int
    dropped: Job | None = None


@runtime_checkable
class JobQueue(Protocol):
    """A priority queue of jobs (seed ORCH-CORE-001)."""

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


_SEQ_BITS = 48
_TAG_SCALE = 1 << 16  # fairness tags keep 16 fractional bits; ties fall back to arrival order


def _order_key(cls: int, tag: float, seq: int) -> int:
    """Pack (class, tag, seq) into one int that sorts the same way: one small object per job
    instead of a tuple of four keeps the sorted list compact and comparisons cheap."""
    return (cls << 160) | (max(0, int(tag * _TAG_SCALE)) << _SEQ_BITS) | seq


class InMemoryJobQueue:
    """In-memory :class:`JobQueue`; every operation O(log n). See the module docstring.

    ``capacity`` is the maximum number of queued jobs (``-1`` = unbounded). ``order`` decides
    which job goes first — the same :class:`~orchestrator_core.scheduling.QueueOrder` plugins
    the schedulers use (``PriorityOrder`` by default, ``FairShareOrder`` for weighted fairness
    between tenants or sessions, ``FifoOrder``); ``promote_after_s`` is only used to build the
    default ``PriorityOrder``. ``clock`` returns Unix seconds and is only used for promotion.
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
        if capacity != UNBOUNDED and capacity < 1:
            raise ValueError(f"capacity: must be -1 or >= 1, got {capacity}")
        self.capacity = capacity
        self.full_policy = FullQueuePolicy(full_policy)
        self.retry_after_s = retry_after_s
        self.order: QueueOrder = order if order is not None else PriorityOrder(promote_after_s)
        self._clock = clock
        self._order: SortedList = SortedList()
        self._by_key: dict[int, str] = {}
        self._entries: dict[str, QueuedJob] = {}
        self._waiting_batch: OrderedDict[str, None] = OrderedDict()
        """Batch jobs not promoted, oldest first: drop-oldest-batch victims, promotion order."""
        self._seq = itertools.count()
        self._depth = {Priority.INTERACTIVE: 0, Priority.BATCH: 0}

    @property
    def promote_after_s(self) -> float | None:
        """Age at which a batch job is promoted (from the order; ``None`` = never)."""
        return self.order.promote_after_s

    # -- internals -----------------------------------------------------------------------

    def _place(self, qj: QueuedJob, cls: int) -> None:
        qj.tag = self.order.tag(qj, cls)  # qj.cls is still the old class during a promotion
        qj.cls = cls
        key = _order_key(cls, qj.tag, qj.seq)
        self._order.add(key)
        self._by_key[key] = qj.job_id

    def _unplace(self, qj: QueuedJob) -> None:
        key = _order_key(qj.cls, qj.tag, qj.seq)
        self._order.remove(key)
        del self._by_key[key]

    def _promote_due(self) -> None:
        age = self.order.promote_after_s
        if age is None or not self._waiting_batch:
            return
        cutoff = self._clock() - age
        while self._waiting_batch:
            job_id = next(iter(self._waiting_batch))
            qj = self._entries[job_id]
            if qj.queued_at > cutoff:
                break
            del self._waiting_batch[job_id]
            if qj.cls != 0:
                self._unplace(qj)
                self._place(qj, 0)
                qj.promoted = True

    def _take(self, job_id: str, *, served: bool) -> Job:
        qj = self._entries.pop(job_id, None)
        if qj is None:
            raise JobNotFound(job_id)
        self._unplace(qj)
        self._waiting_batch.pop(job_id, None)
        self._depth[qj.priority] -= 1
        self.order.on_leave(qj, served=served)
        return qj.job

    def _head_id(self) -> str | None:
        return self._by_key[self._order[0]] if self._order else None

    # -- protocol ------------------------------------------------------------------------

    def enqueue(self, job: Job) -> EnqueueResult:
        """Add ``job`` (status must be queued). See :class:`FullQueuePolicy` for a full queue."""
        if job.status is not JobStatus.QUEUED:
            raise ValueError(f"job {job.job_id}: only queued jobs can be enqueued ({job.status})")
        if job.job_id in self._entries:
            raise ValueError(f"job {job.job_id} is already queued")
        self._promote_due()
        dropped: Job | None = None
        if self.capacity != UNBOUNDED and len(self._entries) >= self.capacity:
            if self.full_policy is FullQueuePolicy.DROP_OLDEST_BATCH and self._waiting_batch:
                oldest = next(iter(self._waiting_batch))
                dropped = self._take(oldest, served=False)
                dropped.fail(
                    ErrorCode.QUEUE_FULL,
                    "dropped from a full queue to make room (drop-oldest-batch)",
                    now=self._clock(),
                )
            else:
                raise QueueFull(self.capacity, self.retry_after_s)
        qj = QueuedJob(job, job.model_ref, next(self._seq))
        cls = self.order.class_of(job.priority)
        qj.cls = cls
        self._place(qj, cls)
        self._entries[job.job_id] = qj
        self._depth[job.priority] += 1
        if job.priority is Priority.BATCH:
            self._waiting_batch[job.job_id] = None
        # Promote a job that was already old when it arrived (e.g. restored after a restart).
        self._promote_due()
        return EnqueueResult(self.position(job.job_id), dropped)

    def dequeue(self) -> Job | None:
        """Remove and return the next job, or ``None``."""
        self._promote_due()
        head = self._head_id()
        return None if head is None else self._take(head, served=True)

    def peek(self) -> Job | None:
        """The next job, or ``None``."""
        self._promote_due()
        head = self._head_id()
        return None if head is None else self._entries[head].job

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
        qj = self._entries.get(job_id)
        return None if qj is None else qj.job

    def position(self, job_id: str) -> int:
        """Jobs ahead of ``job_id`` (0 = next)."""
        self._promote_due()
        qj = self._entries.get(job_id)
        if qj is None:
            raise JobNotFound(job_id)
        return int(self._order.index(_order_key(qj.cls, qj.tag, qj.seq)))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def __iter__(self) -> Iterator[Job]:
        self._promote_due()
        for key in list(self._order):
            yield self._entries[self._by_key[key]].job

    def head(self, n: int) -> list[Job]:
        """The first ``n`` jobs in dequeue order, in O(n + log len)."""
        self._promote_due()
        return [self._entries[self._by_key[k]].job for k in self._order.islice(0, n)]

    def depth(self, priority: Priority) -> int:
        """Queued jobs submitted with ``priority`` (promoted batch jobs still count as batch)."""
        return self._depth[priority]
