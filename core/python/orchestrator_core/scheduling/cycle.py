"""One decision of the built-in scheduler: its limits and its overlay on the snapshot.

The snapshot stays unchanged while the built-in scheduler decides; :class:`Cycle` records
what the decision has done so far on top of it — jobs taken, worker slots assigned, VRAM
reserved by starts and released by evictions, workers withheld for draining — and walks the
snapshot's sorted indexes with :class:`Merge`, which re-inserts an entry with its new (worse)
key after use without touching the index.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from typing import Any

from orchestrator_core.scheduling.decisions import Action
from orchestrator_core.scheduling.eviction import EvictionPolicy
from orchestrator_core.scheduling.indexes import SortedSeq
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

__all__ = ["Cycle", "CycleLimits", "Merge", "Rank"]

Rank = tuple[int, tuple[float, int]]
"""Queue rank of a job: ``(order class, (tag, seq))``; lower runs first."""


@dataclass(frozen=True, slots=True)
class CycleLimits:
    """The built-in scheduler's settings one decision works with (see
    :class:`~orchestrator_core.scheduling.scheduler.BuiltinScheduler`)."""

    eviction: EvictionPolicy
    scale_out: bool
    drain_after_s: float | None
    max_drains: int
    max_actions: int
    max_start_attempts: int
    runners_up: int


class Merge:
    """Walks a sorted list that stays frozen during the cycle, merged with a heap of entries
    re-inserted with worse keys. Each entity is pushed only after it was popped, so it is
    never present twice."""

    __slots__ = ("heap", "pos", "sl")

    def __init__(self, sl: SortedSeq) -> None:
        self.sl = sl
        self.pos = 0
        self.heap: list[Any] = []

    def peek(self) -> Any:
        """The next entry, or ``None``."""
        item = self.sl[self.pos] if self.pos < len(self.sl) else None
        if self.heap and (item is None or self.heap[0] < item):
            return self.heap[0]
        return item

    def pop(self) -> Any:
        """Take the next entry."""
        item = self.sl[self.pos] if self.pos < len(self.sl) else None
        if self.heap and (item is None or self.heap[0] < item):
            return heapq.heappop(self.heap)
        self.pos += 1
        return item

    def push(self, item: Any) -> None:
        """Re-insert an entry taken before, with its new key."""
        heapq.heappush(self.heap, item)

    def upcoming(self, n: int) -> list[Any]:
        """The next ``n`` entries without consuming them."""
        ahead = list(self.sl.islice(self.pos, self.pos + n))
        return sorted(ahead + heapq.nsmallest(n, self.heap))[:n]


class Cycle:
    """What this decision has done so far, on top of the (unchanged) snapshot."""

    def __init__(self, snap: SchedulingSnapshot, limits: CycleLimits) -> None:
        self.snap = snap
        self.limits = limits
        self.now = snap.now
        self.actions: list[Action] = []
        self.waiting: list[dict[str, Any]] = []
        self.workers: dict[str, tuple[Merge, Merge] | None] = {}
        self.groups: dict[tuple[str, int], Merge] = {}
        self.consumed: Counter[tuple[str, str, int]] = Counter()
        self.assigned: Counter[str] = Counter()
        self.tenant_started: Counter[str] = Counter()
        self.dispatched: Counter[str] = Counter()
        self.rejected: set[str] = set()
        self.reserved: Counter[tuple[str, str]] = Counter()
        self.released: Counter[tuple[str, str]] = Counter()
        self.evicted: set[str] = set()
        self.withheld: set[str] = set()  # workers being drained: no new jobs this cycle
        self.drains: dict[str, dict[str, Any]] = {}  # model -> drain plan note
        self.drain_gpus: set[tuple[str, str]] = set()
        self.seq = snap.dispatch_seq

    def full(self) -> bool:
        """Whether the decision holds ``max_actions`` actions."""
        return len(self.actions) >= self.limits.max_actions

    def worker_merges(self, model_ref: str) -> tuple[Merge, Merge] | None:
        """A model's free workers (online, degraded) as this cycle has left them."""
        if model_ref in self.workers:
            return self.workers[model_ref]
        lists = self.snap.free_worker_lists(model_ref)
        merges = None if lists is None else (Merge(lists[0]), Merge(lists[1]))
        self.workers[model_ref] = merges
        return merges

    def top_worker(self, merges: tuple[Merge, Merge]) -> tuple[Merge, str] | None:
        """The merge holding the best usable worker (online first), skipping withheld ones."""
        for merge, label in ((merges[0], "online"), (merges[1], "degraded")):
            while (item := merge.peek()) is not None:
                if item[1] not in self.withheld:
                    return merge, label
                merge.pop()
        return None

    def group_merge(self, model_ref: str, cls: int) -> Merge:
        """A model's tenant heads in class ``cls`` as this cycle has left them."""
        merge = self.groups.get((model_ref, cls))
        if merge is None:
            merge = self.groups[(model_ref, cls)] = Merge(self.snap.tenant_heads(model_ref, cls))
        return merge

    def head_job(self, model_ref: str, cls: int) -> str | None:
        """The model's next job of class ``cls`` this cycle has not taken."""
        snap = self.snap
        merge = self.groups.get((model_ref, cls))
        if merge is not None:
            head = merge.peek()
        else:
            heads = snap.tenant_heads(model_ref, cls)
            head = heads[0] if heads else None
        if head is None:
            return None
        tenant = head[1]
        at = self.consumed[(model_ref, tenant, cls)]
        lst = snap.tenant_jobs(model_ref, tenant, cls)
        return str(lst[at][2]) if at < len(lst) else None

    def rank(self, job_id: str | None) -> Rank:
        """Queue rank of a job (past every job if unknown)."""
        job = None if job_id is None else self.snap.job(job_id)
        return (2, (0.0, 0)) if job is None else (job.cls, (job.tag, job.seq))
