"""QueueIndex: the queued jobs in queue order — classes, positions and promotion.

The one implementation of the queue's order, used both by the cluster state (through its
demand index, which groups the same jobs by model and tenant) and by
:class:`~orchestrator_core.queues.InMemoryJobQueue`:

* a :class:`~orchestrator_core.scheduling.ordering.QueueOrder` gives each job a class and a
  tag when it enters; each class is a sorted list of ``(tag, seq, job_id)`` (``seq``: the
  arrival number), so a job's position is its index there, in O(log n);
* an age index of the jobs that may still be promoted or dropped — batch jobs and class-1
  jobs not promoted — sorted by ``(queued_at, seq)``: promotion takes its due head, the
  full-queue policy ``drop-oldest-batch`` its oldest batch job, each in O(log n);
* promotion (starvation guard): a class-1 job that has waited ``promote_after_s`` moves to
  class 0 with a new tag from the order (the priority order keeps its queueing time, so it
  runs before interactive jobs that arrived after it). It happens only when asked
  (:meth:`QueueIndex.promote_due`, with the caller's clock), each job at most once.

A :class:`QueueListener` hears every job that takes or leaves its place, so an index built
on top (per model, per tenant) follows promotions and re-orderings without a second
definition of either.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from sortedcontainers import SortedList

from orchestrator_core.errors import JobNotFound
from orchestrator_core.jobs import Job, Priority
from orchestrator_core.scheduling.ordering import FifoOrder, PriorityOrder, QueueOrder
from orchestrator_core.scheduling.views import QueuedJob

__all__ = ["QueueIndex", "QueueListener"]


class QueueListener(Protocol):
    """Told whenever a job takes or leaves its place in the order."""

    def job_linked(self, job: QueuedJob, *, entered: bool) -> None:
        """``job`` took its place: it ``entered`` the queue, or was re-keyed (promotion,
        a new order)."""
        ...

    def job_unlinking(self, job: QueuedJob, *, leaving: bool) -> None:
        """``job`` is about to leave its place (its key is still the old one): it is
        ``leaving`` the queue, or being re-keyed."""
        ...


def _ages(job: QueuedJob) -> bool:
    """Whether ``job`` belongs to the age index (promotion and drop candidates)."""
    return not job.promoted and (job.cls == 1 or job.priority is Priority.BATCH)


class QueueIndex:
    """Queued jobs in queue order (see the module docstring). Every method is O(log n)
    except :meth:`ordered` (O(log n + returned)) and :meth:`reorder` (O(n log n))."""

    def __init__(self, order: QueueOrder, listener: QueueListener | None = None) -> None:
        self._order = order
        self._listener = listener
        self._jobs: dict[str, QueuedJob] = {}
        self._classes: tuple[Any, Any] = (SortedList(), SortedList())
        self._aging: Any = SortedList()  # (queued_at, seq, job_id), see _ages
        self._by_priority: Counter[Priority] = Counter()
        self._queued_at_sum = 0.0
        self._seq = itertools.count(1)

    @property
    def order(self) -> QueueOrder:
        """The queue order the jobs are sorted by."""
        return self._order

    # -- changes ---------------------------------------------------------------------------

    def add(self, job: Job, model_ref: str) -> QueuedJob:
        """Queue ``job`` (the caller checked it is queued and new) for canonical model
        ``model_ref``; its class and tag come from the order."""
        qj = QueuedJob(job, model_ref, next(self._seq))
        qj.cls = self._order.class_of(job.priority)
        qj.tag = self._order.tag(qj, qj.cls)
        self._jobs[qj.job_id] = qj
        self._by_priority[qj.priority] += 1
        self._queued_at_sum += qj.queued_at
        self._link(qj, entered=True)
        return qj

    def remove(self, job_id: str, *, served: bool) -> QueuedJob:
        """Take a job out (``served``: it was dispatched, for fair-share accounting);
        :class:`JobNotFound` if it is not queued."""
        qj = self._jobs.get(job_id)
        if qj is None:
            raise JobNotFound(job_id)
        self._unlink(qj, leaving=True)
        del self._jobs[job_id]
        self._by_priority[qj.priority] -= 1
        self._queued_at_sum -= qj.queued_at
        self._order.on_leave(qj, served=served)
        return qj

    def promote_due(self, now: float, limit: int | None = None) -> int:
        """Promote the jobs that have waited ``promote_after_s`` by ``now`` (at most
        ``limit``, oldest first); returns how many were taken off the age index."""
        after = self._order.promote_after_s
        aging = self._aging
        if after is None or not aging:
            return 0
        cutoff = now - after
        done = 0
        while aging and (limit is None or done < limit):
            entry = aging[0]
            if entry[0] > cutoff:
                break
            qj = self._jobs[entry[2]]
            done += 1
            if qj.cls == 0:  # a batch job its order already runs first: nothing to move
                aging.remove(entry)
                continue
            self._unlink(qj, leaving=False)
            qj.promoted = True
            qj.tag = self._order.tag(qj, 0)  # qj.cls is still the old class here
            qj.cls = 0
            self._link(qj, entered=False)
        return done

    def reorder(self, order: QueueOrder) -> None:
        """Re-key every job for a new order, in arrival order (promotions start over)."""
        jobs = sorted(self._jobs.values(), key=lambda q: q.seq)
        for qj in jobs:
            self._unlink(qj, leaving=False)
        self._order = order
        for qj in jobs:
            qj.promoted = False
            qj.cls = order.class_of(qj.priority)
            qj.tag = order.tag(qj, qj.cls)
            self._link(qj, entered=False)

    def _link(self, qj: QueuedJob, *, entered: bool) -> None:
        self._classes[qj.cls].add((qj.tag, qj.seq, qj.job_id))
        if _ages(qj):
            self._aging.add((qj.queued_at, qj.seq, qj.job_id))
        if self._listener is not None:
            self._listener.job_linked(qj, entered=entered)

    def _unlink(self, qj: QueuedJob, *, leaving: bool) -> None:
        if self._listener is not None:
            self._listener.job_unlinking(qj, leaving=leaving)
        self._classes[qj.cls].remove((qj.tag, qj.seq, qj.job_id))
        if _ages(qj):
            self._aging.discard((qj.queued_at, qj.seq, qj.job_id))

    # -- reads -----------------------------------------------------------------------------

    def get(self, job_id: str) -> QueuedJob | None:
        """The queued job with this id, or ``None``."""
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def __iter__(self) -> Iterator[QueuedJob]:
        """Every queued job in queue order."""
        jobs = self._jobs
        for cls in (0, 1):
            for key in self._classes[cls]:
                yield jobs[key[2]]

    def first(self) -> QueuedJob | None:
        """The next job, or ``None``."""
        for sl in self._classes:
            if sl:
                return self._jobs[sl[0][2]]
        return None

    def position(self, job_id: str) -> int:
        """Queued jobs ahead of ``job_id`` (0 = next); :class:`JobNotFound` if absent."""
        qj = self._jobs.get(job_id)
        if qj is None:
            raise JobNotFound(job_id)
        key = (qj.tag, qj.seq, qj.job_id)
        if qj.cls == 0:
            return int(self._classes[0].index(key))
        return len(self._classes[0]) + int(self._classes[1].index(key))

    def position_of_new(
        self, priority: Priority, queued_at: float, *, dropping: QueuedJob | None = None
    ) -> int:
        """Where a new job of ``priority`` queued at ``queued_at`` would stand (0 = next)
        once added, with ``dropping`` taken out first. Exact for orders whose tag is the
        queueing time (priority, FIFO); for other orders (fair share, whose tag depends on
        its tenant's history) the tail of the job's class."""
        order = self._order
        cls = order.class_of(priority)
        if type(order) in (PriorityOrder, FifoOrder):
            tag = queued_at
            ahead = int(self._classes[cls].bisect_left((tag, math.inf)))
        else:
            tag = math.inf
            ahead = len(self._classes[cls])
        if cls == 1:
            ahead += len(self._classes[0])
        if dropping is not None and (dropping.cls, dropping.tag, dropping.seq) < (
            cls,
            tag,
            math.inf,
        ):
            ahead -= 1
        return ahead

    def ordered(self, limit: int | None = None, *, cls: int | None = None) -> list[QueuedJob]:
        """The first ``limit`` queued jobs in queue order (of one class if ``cls`` is given)."""
        out: list[QueuedJob] = []
        for c in (0, 1) if cls is None else (cls,):
            room = None if limit is None else limit - len(out)
            if room is not None and room <= 0:
                break
            out.extend(self._jobs[k[2]] for k in self._classes[c].islice(0, room))
        return out

    def oldest_unpromoted_batch(self, now: float | None = None) -> QueuedJob | None:
        """The batch job queued earliest that is not promoted — the ``drop-oldest-batch``
        victim — or ``None``. With ``now``, jobs already due for promotion at ``now`` count
        as promoted."""
        aging = self._aging
        start = 0
        after = self._order.promote_after_s
        if now is not None and after is not None:
            start = aging.bisect_right((now - after, math.inf))
        for entry in aging.islice(start):
            qj = self._jobs[entry[2]]
            if qj.priority is Priority.BATCH:
                return qj
        return None

    def class_count(self, cls: int) -> int:
        """Queued jobs in order class ``cls`` (0 includes promoted batch jobs)."""
        return len(self._classes[cls])

    def count(self, priority: Priority | None = None) -> int:
        """Queued jobs in total, or of one submitted priority."""
        return len(self._jobs) if priority is None else self._by_priority[priority]

    def mean_queued_at(self) -> float:
        """Mean ``queued_at`` of the queued jobs (0 when empty); O(1)."""
        return self._queued_at_sum / len(self._jobs) if self._jobs else 0.0
