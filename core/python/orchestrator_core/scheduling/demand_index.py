"""DemandIndex: queued jobs by model and tenant, tenants' usage, and the models with demand.

It listens to the :class:`~orchestrator_core.scheduling.queue_index.QueueIndex` (so it
follows arrivals, departures and promotions in the one queue order) and keeps:

* per model, per tenant, per order class, the queued jobs sorted by ``(tag, seq)``; per
  model and class, each tenant's head job (parked tenants — at their running quota with
  ``quota_action = "wait"`` — have none);
* per class, the models with an unparked job waiting, keyed by their best head, split into
  *dispatchable* (the model has a free ready worker), *cold* (no live worker: needs a
  start) and *scaling* (more demand than live worker slots). The next job to dispatch is
  the first entry of the dispatchable index, so jobs whose model has no free worker never
  block the others (no head-of-line blocking);
* tenants: weight, quotas, queued and running jobs.

Whether a model has a free or live worker is the fleet's to say (:class:`ModelCapacity`);
the fleet calls :meth:`DemandIndex.refresh_model` when that changes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sortedcontainers import SortedList

from orchestrator_core.scheduling.indexes import EMPTY, KeyedIndex, SortedSeq
from orchestrator_core.scheduling.views import QueuedJob, TenantView

__all__ = ["DemandIndex", "ModelCapacity", "QuotaAction", "TenantQuota"]

QuotaAction = Literal["wait", "reject"]
HeadKey = tuple[float, int]  # (tag, seq) of a head job


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """A tenant's fair-share weight and quotas (``None`` = unlimited)."""

    tenant_id: str
    weight: float = 1.0
    max_queued: int | None = None
    max_running: int | None = None


class ModelCapacity(Protocol):
    """What the demand index asks the fleet about a model."""

    def has_free_worker(self, model_ref: str) -> bool:
        """Whether a worker of the model has a free slot now."""
        ...

    def live_slots(self, model_ref: str) -> int:
        """Slots of the model's ready, busy and starting workers."""
        ...


class _Group:
    """Queued jobs of one (model, tenant), one sorted list per order class."""

    __slots__ = ("lists", "model_ref", "parked", "tenant")

    def __init__(self, model_ref: str, tenant: str, parked: bool) -> None:
        self.model_ref = model_ref
        self.tenant = tenant
        self.parked = parked
        self.lists: tuple[Any, Any] = (SortedList(), SortedList())

    def size(self) -> int:
        return len(self.lists[0]) + len(self.lists[1])


class _ModelQueue:
    """Queued jobs of one model: its groups and, per class, their heads."""

    __slots__ = ("groups", "heads", "model_ref", "queued", "unparked")

    def __init__(self, model_ref: str) -> None:
        self.model_ref = model_ref
        self.groups: dict[str, _Group] = {}
        self.heads: tuple[KeyedIndex[HeadKey], KeyedIndex[HeadKey]] = (
            KeyedIndex(),
            KeyedIndex(),
        )
        self.queued = 0
        self.unparked = 0


class _Tenant:
    __slots__ = (
        "max_queued",
        "max_running",
        "models",
        "parked",
        "queued",
        "running",
        "tenant_id",
        "weight",
    )

    def __init__(self, quota: TenantQuota) -> None:
        self.tenant_id = quota.tenant_id
        self.weight = quota.weight
        self.max_queued = quota.max_queued
        self.max_running = quota.max_running
        self.queued = 0
        self.running = 0
        self.parked = False
        self.models: Counter[str] = Counter()


def _pair() -> tuple[KeyedIndex[HeadKey], KeyedIndex[HeadKey]]:
    return (KeyedIndex(), KeyedIndex())


class DemandIndex:
    """Queued jobs by model and tenant (see the module docstring); O(log n) per change."""

    def __init__(
        self,
        capacity: ModelCapacity,
        *,
        tenants: dict[str, TenantQuota],
        enforce_quotas: bool,
        quota_action: QuotaAction,
    ) -> None:
        self._capacity = capacity
        self._quotas = tenants
        self.enforce_quotas = enforce_quotas
        self.quota_action: QuotaAction = quota_action
        self._models: dict[str, _ModelQueue] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._dispatchable = _pair()
        self._cold = _pair()
        self._scaling = _pair()

    # -- queue listener --------------------------------------------------------------------

    def job_linked(self, job: QueuedJob, *, entered: bool) -> None:
        """A job took its place in the order: file it under its model and tenant."""
        tenant = self._tenant(job.tenant_key)
        if entered:
            tenant.queued += 1
            tenant.models[job.model_ref] += 1
        mq = self._models.get(job.model_ref)
        if mq is None:
            mq = self._models[job.model_ref] = _ModelQueue(job.model_ref)
        group = mq.groups.get(tenant.tenant_id)
        if group is None:
            group = mq.groups[tenant.tenant_id] = _Group(
                job.model_ref, tenant.tenant_id, tenant.parked
            )
        group.lists[job.cls].add((job.tag, job.seq, job.job_id))
        mq.queued += 1
        if not group.parked:
            mq.unparked += 1
        self._group_head(mq, group, job.cls)
        self._refresh(mq)

    def job_unlinking(self, job: QueuedJob, *, leaving: bool) -> None:
        """A job leaves its place in the order: take it out of its model and tenant."""
        mq = self._models[job.model_ref]
        group = mq.groups[job.tenant_key]
        group.lists[job.cls].remove((job.tag, job.seq, job.job_id))
        mq.queued -= 1
        if not group.parked:
            mq.unparked -= 1
        self._group_head(mq, group, job.cls)
        if not group.size():
            del mq.groups[job.tenant_key]
        self._refresh(mq)
        if leaving:
            tenant = self._tenant(job.tenant_key)
            tenant.queued -= 1
            tenant.models[job.model_ref] -= 1
            if tenant.models[job.model_ref] <= 0:
                del tenant.models[job.model_ref]

    # -- tenants ---------------------------------------------------------------------------

    def tenant_started(self, tenant_id: str) -> None:
        """A job of the tenant started running (counts against ``max_running``)."""
        tenant = self._tenant(tenant_id)
        tenant.running += 1
        self._update_parking(tenant)

    def tenant_finished(self, tenant_id: str) -> None:
        """A running job of the tenant ended."""
        tenant = self._tenant(tenant_id)
        tenant.running -= 1
        self._update_parking(tenant)

    def _tenant(self, tenant_id: str) -> _Tenant:
        t = self._tenants.get(tenant_id)
        if t is None:
            t = self._tenants[tenant_id] = _Tenant(
                self._quotas.get(tenant_id, TenantQuota(tenant_id))
            )
            t.parked = self._should_park(t)
        return t

    def _should_park(self, t: _Tenant) -> bool:
        return (
            self.enforce_quotas
            and self.quota_action == "wait"
            and t.max_running is not None
            and t.running >= t.max_running
        )

    def _update_parking(self, t: _Tenant) -> None:
        park = self._should_park(t)
        if park == t.parked:
            return
        t.parked = park
        for model_ref in list(t.models):
            mq = self._models.get(model_ref)
            group = None if mq is None else mq.groups.get(t.tenant_id)
            if mq is None or group is None:
                continue
            group.parked = park
            mq.unparked += -group.size() if park else group.size()
            for cls in (0, 1):
                self._group_head(mq, group, cls)
            self._refresh(mq)

    def tenant_view(self, tenant_id: str) -> TenantView:
        """Weight, quotas and usage of a tenant (unknown tenants: defaults, no usage)."""
        t = self._tenants.get(tenant_id)
        if t is None:
            q = self._quotas.get(tenant_id, TenantQuota(tenant_id))
            return TenantView(tenant_id, q.weight, q.max_queued, q.max_running, 0, 0)
        return TenantView(t.tenant_id, t.weight, t.max_queued, t.max_running, t.queued, t.running)

    def tenant_ids(self) -> list[str]:
        """Configured tenants and tenants with queued or running jobs, sorted."""
        active = {t for t, r in self._tenants.items() if r.queued or r.running}
        return sorted(active | set(self._quotas))

    def tenant_queued(self, tenant_id: str) -> int:
        """Queued jobs of a tenant (``""``: jobs without a tenant)."""
        t = self._tenants.get(tenant_id)
        return 0 if t is None else t.queued

    # -- models ----------------------------------------------------------------------------

    def refresh_model(self, model_ref: str) -> None:
        """The fleet's capacity for ``model_ref`` changed: re-file it as dispatchable, cold
        or scaling."""
        mq = self._models.get(model_ref)
        if mq is not None:
            self._refresh(mq)

    def _group_head(self, mq: _ModelQueue, group: _Group, cls: int) -> None:
        lst = group.lists[cls]
        if group.parked or not lst:
            mq.heads[cls].set(group.tenant, None)
        else:
            head = lst[0]
            mq.heads[cls].set(group.tenant, (head[0], head[1]))

    def _refresh(self, mq: _ModelQueue) -> None:
        m = mq.model_ref
        free = self._capacity.has_free_worker(m)
        live = self._capacity.live_slots(m)
        demand = mq.unparked
        cold = demand > 0 and live == 0
        scaling = demand > live > 0
        for cls in (0, 1):
            first = mq.heads[cls].first()
            key = None if first is None else first[0]
            self._dispatchable[cls].set(m, key if free else None)
            self._cold[cls].set(m, key if cold else None)
            self._scaling[cls].set(m, key if scaling else None)

    # -- reads for planners ----------------------------------------------------------------

    def dispatchable(self, cls: int) -> SortedSeq:
        """Models with a job of class ``cls`` and a free worker: ``(head key, model_ref)``."""
        seq: SortedSeq = self._dispatchable[cls].sl
        return seq

    def cold(self, cls: int) -> SortedSeq:
        """Models with a job of class ``cls`` and no live worker: ``(head key, model_ref)``."""
        seq: SortedSeq = self._cold[cls].sl
        return seq

    def scaling(self, cls: int) -> SortedSeq:
        """Models with a job of class ``cls`` and more demand than live worker slots."""
        seq: SortedSeq = self._scaling[cls].sl
        return seq

    def heads(self, model_ref: str, cls: int) -> SortedSeq:
        """Each unparked tenant's head job of a model in class ``cls``: ``((tag, seq),
        tenant)``, best first."""
        mq = self._models.get(model_ref)
        if mq is None:
            return EMPTY
        seq: SortedSeq = mq.heads[cls].sl
        return seq

    def tenant_jobs(self, model_ref: str, tenant: str, cls: int) -> SortedSeq:
        """A tenant's queued jobs of a model in class ``cls``: ``(tag, seq, job_id)``."""
        mq = self._models.get(model_ref)
        group = None if mq is None else mq.groups.get(tenant)
        if group is None:
            return EMPTY
        seq: SortedSeq = group.lists[cls]
        return seq

    def model_tenants(self, model_ref: str) -> list[str]:
        """Tenants with a queued job of a model, in the order they first queued one."""
        mq = self._models.get(model_ref)
        return [] if mq is None else list(mq.groups)

    def queued(self, model_ref: str) -> int:
        """Queued jobs of a model."""
        mq = self._models.get(model_ref)
        return 0 if mq is None else mq.queued

    def demand(self, model_ref: str) -> int:
        """Queued jobs of a model whose tenant is not parked."""
        mq = self._models.get(model_ref)
        return 0 if mq is None else mq.unparked

    def self_check(self) -> list[str]:
        """Differences between the per-model counts and the groups (empty: consistent)."""
        problems: list[str] = []
        for m, mq in self._models.items():
            n = sum(g.size() for g in mq.groups.values())
            if n != mq.queued:
                problems.append(f"model {m}: queued {mq.queued} != {n}")
        return problems
