"""Queue orders (the queue-sort extension point): which queued job goes first.

A queue order assigns every queued job a *class* and a *tag* when it enters the queue; jobs
run by class (0 before 1), then by ``(tag, seq)``. Because the key is fixed on entry (and
changed only by promotion), the cluster state can keep per-model, per-tenant queues sorted
and find the next job in O(log n) — the order is never re-evaluated over the whole queue.

* :class:`FifoOrder` — one class, arrival order (``queued_at``, then arrival number).
* :class:`PriorityOrder` — interactive (class 0) before batch (class 1), FIFO within a
  class; a batch job waiting ``promote_after_s`` moves to class 0, keeping its arrival time,
  so it runs before interactive jobs that arrived after it (starvation guard).
* :class:`FairShareOrder` — as priority, but within a class the tag is a start-time fair
  queuing virtual time per tenant (or session), so backlogged tenants share dispatches in
  proportion to their weights and a tenant that was idle gets no hoarded credit.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from orchestrator_core.jobs import Priority
from orchestrator_core.scheduling.views import QueuedJob

__all__ = [
    "BATCH_CLASS",
    "INTERACTIVE_CLASS",
    "FairShareOrder",
    "FifoOrder",
    "PriorityOrder",
    "QueueOrder",
]

INTERACTIVE_CLASS = 0
"""Class of interactive and promoted batch jobs (and of every job under FIFO)."""
BATCH_CLASS = 1
"""Class of batch jobs not (yet) promoted."""


@runtime_checkable
class QueueOrder(Protocol):
    """Orders the queue. Stateful orders (fair share) keep per-tenant memory, so each
    cluster state needs its own instance (:meth:`fresh`)."""

    @property
    def name(self) -> str:
        """Registry name (``fifo``, ``priority``, ``fair-share``)."""
        ...

    @property
    def promote_after_s(self) -> float | None:
        """Age at which a class-1 job is promoted to class 0 (``None`` = never)."""
        ...

    def class_of(self, priority: Priority) -> int:
        """Class of a new job of this priority."""
        ...

    def tag(self, job: QueuedJob, cls: int) -> float:
        """Sort tag of ``job`` entering class ``cls`` (on enqueue and on promotion)."""
        ...

    def on_leave(self, job: QueuedJob, *, served: bool) -> None:
        """``job`` left the queue: ``served`` when dispatched, not when cancelled/rejected."""
        ...

    def fresh(self) -> QueueOrder:
        """A new instance with the same settings and no memory (used to re-index)."""
        ...


class FifoOrder:
    """Arrival order, priorities ignored."""

    name = "fifo"
    promote_after_s: float | None = None

    def class_of(self, priority: Priority) -> int:
        """Always class 0."""
        return INTERACTIVE_CLASS

    def tag(self, job: QueuedJob, cls: int) -> float:
        """The time the job was queued."""
        return job.queued_at

    def on_leave(self, job: QueuedJob, *, served: bool) -> None:
        """Nothing to remember."""

    def fresh(self) -> FifoOrder:
        """A new FIFO order."""
        return FifoOrder()

    def __repr__(self) -> str:
        return "FifoOrder()"


class PriorityOrder:
    """Interactive first, FIFO within a priority, aged batch jobs promoted."""

    name = "priority"

    def __init__(self, promote_after_s: float | None = 300.0) -> None:
        if promote_after_s is not None and promote_after_s <= 0:
            raise ValueError(f"promote_after_s: must be > 0 or None, got {promote_after_s}")
        self.promote_after_s = promote_after_s

    def class_of(self, priority: Priority) -> int:
        """0 for interactive, 1 for batch."""
        return priority.rank

    def tag(self, job: QueuedJob, cls: int) -> float:
        """The time the job was queued (a promoted job keeps its place in time)."""
        return job.queued_at

    def on_leave(self, job: QueuedJob, *, served: bool) -> None:
        """Nothing to remember."""

    def fresh(self) -> PriorityOrder:
        """A new priority order with the same promotion age."""
        return PriorityOrder(self.promote_after_s)

    def __repr__(self) -> str:
        return f"PriorityOrder(promote_after_s={self.promote_after_s!r})"


class FairShareOrder:
    """Priority classes; within a class, start-time fair queuing between tenants or sessions.

    Each key (tenant id, or session id with ``by="session"``; jobs without one share ``""``)
    has a virtual finish time per class. A job entering class ``c`` gets the tag
    ``start = max(V[c], finish[c, key])`` and moves ``finish[c, key]`` to
    ``start + 1 / weight(key)``; ``V[c]`` advances to the tag of each job dispatched. With
    equal weights, backlogged tenants alternate; with weights 2:1 they get 2:1 of the
    dispatches; a promoted job is re-tagged in class 0 like a new arrival of its tenant.
    """

    name = "fair-share"

    def __init__(
        self,
        *,
        by: Literal["tenant", "session"] = "tenant",
        weights: dict[str, float] | None = None,
        default_weight: float = 1.0,
        promote_after_s: float | None = 300.0,
    ) -> None:
        if by not in ("tenant", "session"):
            raise ValueError(f"by: must be 'tenant' or 'session', got {by!r}")
        if default_weight <= 0 or any(w <= 0 for w in (weights or {}).values()):
            raise ValueError("fairness weights must be > 0")
        if promote_after_s is not None and promote_after_s <= 0:
            raise ValueError(f"promote_after_s: must be > 0 or None, got {promote_after_s}")
        self.by = by
        self.weights = dict(weights or {})
        self.default_weight = default_weight
        self.promote_after_s = promote_after_s
        self._vtime = [0.0, 0.0]
        self._finish: dict[tuple[int, str], float] = {}
        self._queued: dict[tuple[int, str], int] = {}

    def key_of(self, job: QueuedJob) -> str:
        """The fairness key of ``job``."""
        value = job.tenant_id if self.by == "tenant" else job.session_id
        return value or ""

    def weight(self, key: str) -> float:
        """Weight of a fairness key."""
        return self.weights.get(key, self.default_weight)

    def class_of(self, priority: Priority) -> int:
        """0 for interactive, 1 for batch."""
        return priority.rank

    def tag(self, job: QueuedJob, cls: int) -> float:
        """Virtual start time of ``job`` in class ``cls`` (``job.cls`` is still its old class
        when it is being promoted)."""
        if cls != job.cls:  # a promotion: the job moves from its old class to ``cls``
            self._count(job.cls, self.key_of(job), -1)
        key = (cls, self.key_of(job))
        start = max(self._vtime[cls], self._finish.get(key, 0.0))
        self._finish[key] = start + 1.0 / self.weight(key[1])
        self._count(cls, key[1], +1)
        return start

    def on_leave(self, job: QueuedJob, *, served: bool) -> None:
        """Advance the class virtual time past a dispatched job; forget idle keys."""
        cls = job.cls
        if served and job.tag > self._vtime[cls]:
            self._vtime[cls] = job.tag
        self._count(cls, self.key_of(job), -1)

    def _count(self, cls: int, key: str, delta: int) -> None:
        k = (cls, key)
        n = self._queued.get(k, 0) + delta
        if n > 0:
            self._queued[k] = n
            return
        self._queued.pop(k, None)
        # An idle key whose finish time the virtual clock has passed carries no history.
        if self._finish.get(k, 0.0) <= self._vtime[cls]:
            self._finish.pop(k, None)

    def __repr__(self) -> str:
        return (
            f"FairShareOrder(by={self.by!r}, weights={self.weights!r},"
            f" promote_after_s={self.promote_after_s!r})"
        )

    def fresh(self) -> FairShareOrder:
        """A new fair-share order with the same settings and no virtual-time memory."""
        return FairShareOrder(
            by=self.by,
            weights=self.weights,
            default_weight=self.default_weight,
            promote_after_s=self.promote_after_s,
        )
