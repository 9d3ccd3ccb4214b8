"""The job queue: interactive before batch, FIFO within a priority, bounded, with promotion.

:class:`JobQueue` is the protocol (seed ORCH-CORE-001: enqueue, dequeue, peek, plus remove,
cancel, len and position). :class:`InMemoryJobQueue` implements it with every operation in
O(log n) of the queue length:

* one sorted list of ``(class, tag, seq)`` keys, packed into one int, orders the queue —
  class 0 is interactive (and promoted batch), class 1 is batch; ``tag`` comes from the
  fairness hook (the arrival sequence number for plain FIFO); a key's index is the job's position;
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

__all__ = [
    "UNBOUNDED",
    "EnqueueResult",
    "FairnessHook",
    "FifoFairness",
    "FullQueuePolicy",
    "InMemoryJobQueue",
    "JobQueue",
    "WeightedFairness",
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


class FairnessHook(Protocol):
    """Orders jobs *within* a priority class (the fairness hook).

    ``tag`` is called once per job when it enters a class (on enqueue, and again on
    promotion); jobs run in increasing tag order, ties by arrival. ``forget`` is called when
    a job leaves the queue, with ``served=True`` when it left to run (dequeue, remove) and
    ``False`` when it was cancelled or dropped.
    """

    def tag(self, job: Job, cls: int, seq: int) -> float:
        """Sort tag of ``job`` entering class ``cls`` with arrival sequence number ``seq``."""
        ...

    def forget(self, job: Job, *, served: bool) -> None:
        """``job`` left the queue."""
        ...


class FifoFairness:
    """No fairness: plain arrival order within a class."""

    def tag(self, job: Job, cls: int, seq: int) -> float:
        """The arrival sequence number."""
        return float(seq)

    def forget(self, job: Job, *, served: bool) -> None:
        """Nothing to forget."""


class WeightedFairness:
    """Start-time fair queuing between tenants (or sessions) within a class.

    Each key (tenant id, or session id with ``by="session"``; jobs without one share the key
    ``""``) has a virtual finish time; a new job of that key gets the start tag
    ``max(class virtual time, key's last finish)`` and finish ``start + 1/weight``. The class
    virtual time advances to the start tag of each job that leaves to be served, so a key
    that was idle gets no credit for the time it did not use. With equal weights, backlogged
    tenants alternate; with weights 2:1 they get 2:1 of the dispatches.
    """

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        *,
        by: str = "tenant",
        default_weight: float = 1.0,
    ) -> None:
        if by not in {"tenant", "session"}:
            raise ValueError("by must be 'tenant' or 'session'")
        if default_weight <= 0 or any(w <= 0 for w in (weights or {}).values()):
            raise ValueError("fairness weights must be > 0")
        self._weights = dict(weights or {})
        self._default = default_weight
        self._by = by
        self._finish: dict[tuple[int, str], float] = {}
        self._vtime: dict[int, float] = {0: 0.0, 1: 0.0}
        self._start: dict[str, tuple[int, float]] = {}

    def key_of(self, job: Job) -> str:
        """The fairness key of ``job`` (its tenant or session id, ``""`` when absent)."""
        value = job.tenant_id if self._by == "tenant" else job.session_id
        return value or ""

    def weight(self, key: str) -> float:
        """Configured weight of ``key``."""
        return self._weights.get(key, self._default)

    def tag(self, job: Job, cls: int, seq: int) -> float:
        """Virtual start time of ``job`` within class ``cls``."""
        key = (cls, self.key_of(job))
        start = max(self._vtime[cls], self._finish.get(key, 0.0))
        self._finish[key] = start + 1.0 / self.weight(key[1])
        self._start[job.job_id] = (cls, start)
        return start

    def forget(self, job: Job, *, served: bool) -> None:
        """Advance the class virtual time past a served job."""
        entry = self._start.pop(job.job_id, None)
        if entry is not None and served:
            cls, start = entry
            self._vtime[cls] = max(self._vtime[cls], start)


_SEQ_BITS = 48
_TAG_SCALE = 1 << 16  # fairness tags keep 16 fractional bits; ties fall back to arrival order


def _order_key(cls: int, tag: float, seq: int) -> int:
    """Pack (class, tag, seq) into one int that sorts the same way: one small object per job
    instead of a tuple of four keeps the sorted list compact and comparisons cheap."""
    return (cls << 160) | (int(tag * _TAG_SCALE) << _SEQ_BITS) | seq


@dataclass(slots=True)
class _Entry:
    job: Job
    key: int
    seq: int


class InMemoryJobQueue:
    """In-memory :class:`JobQueue`; every operation O(log n). See the module docstring.

    ``capacity`` is the maximum number of queued jobs (``-1`` = unbounded). ``promote_after_s``
    is the age at which a batch job is promoted (``None`` = never). ``clock`` returns Unix
    seconds and is only used for promotion.
    """

    def __init__(
        self,
        capacity: int = 100,
        *,
        full_policy: FullQueuePolicy | str = FullQueuePolicy.REJECT,
        promote_after_s: float | None = 300.0,
        fairness: FairnessHook | None = None,
        clock: Clock = time.time,
        retry_after_s: int = 1,
    ) -> None:
        if capacity != UNBOUNDED and capacity < 1:
            raise ValueError(f"capacity: must be -1 or >= 1, got {capacity}")
        self.capacity = capacity
        self.full_policy = FullQueuePolicy(full_policy)
        self.promote_after_s = promote_after_s
        self.retry_after_s = retry_after_s
        self._fair: FairnessHook = fairness or FifoFairness()
        self._clock = clock
        self._order: SortedList = SortedList()
        self._by_key: dict[int, str] = {}
        self._entries: dict[str, _Entry] = {}
        self._waiting_batch: OrderedDict[str, None] = OrderedDict()
        self._seq = itertools.count()
        self._depth = {Priority.INTERACTIVE: 0, Priority.BATCH: 0}

    # -- internals -----------------------------------------------------------------------

    def _promote_due(self) -> None:
        if self.promote_after_s is None or not self._waiting_batch:
            return
        cutoff = self._clock() - self.promote_after_s
        while self._waiting_batch:
            job_id = next(iter(self._waiting_batch))
            entry = self._entries[job_id]
            if entry.job.queued_at > cutoff:
                break
            del self._waiting_batch[job_id]
            self._order.remove(entry.key)
            del self._by_key[entry.key]
            entry.key = _order_key(0, self._fair.tag(entry.job, 0, entry.seq), entry.seq)
            self._order.add(entry.key)
            self._by_key[entry.key] = job_id

    def _take(self, job_id: str, *, served: bool) -> Job:
        entry = self._entries.pop(job_id, None)
        if entry is None:
            raise JobNotFound(job_id)
        self._order.remove(entry.key)
        del self._by_key[entry.key]
        self._waiting_batch.pop(job_id, None)
        self._depth[entry.job.priority] -= 1
        self._fair.forget(entry.job, served=served)
        return entry.job

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
        seq = next(self._seq)
        cls = job.priority.rank
        key = _order_key(cls, self._fair.tag(job, cls, seq), seq)
        self._entries[job.job_id] = _Entry(job, key, seq)
        self._by_key[key] = job.job_id
        self._depth[job.priority] += 1
        if cls == 1:
            self._waiting_batch[job.job_id] = None
        self._order.add(key)
        # Promote a job that was already old when it arrived (e.g. restored after a restart).
        self._promote_due()
        return EnqueueResult(self._order.index(self._entries[job.job_id].key), dropped)

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
        entry = self._entries.get(job_id)
        return None if entry is None else entry.job

    def position(self, job_id: str) -> int:
        """Jobs ahead of ``job_id`` (0 = next)."""
        self._promote_due()
        entry = self._entries.get(job_id)
        if entry is None:
            raise JobNotFound(job_id)
        return int(self._order.index(entry.key))

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
