"""The Scheduler protocol, the built-in scheduler and the registry that builds one by name.

A scheduler turns a :class:`~orchestrator_core.scheduling.snapshot.SchedulingSnapshot` into
a :data:`~orchestrator_core.scheduling.decisions.Decision`. It reads no clock (``now`` is in
the snapshot) and changes nothing: the daemon validates, applies and executes the decision.

The built-in scheduling cycle (:meth:`BuiltinScheduler.schedule`):

0. **Drain** (before 1). A cold model whose oldest job has waited ``drain_after_s`` and that
   no free VRAM can host: the workers that would make room (idle ones if an eviction plan
   exists now, else those on the GPU with the fewest active jobs) get no new job this
   cycle, so step 2 can evict them now or once idle. Until then loaded models keep their
   workers busy (no model thrashing); busy workers are never evicted, they are drained.
1. **Dispatch.** For order class 0 then 1, take the first model in the state's
   *dispatchable* index (models with a queued job and a free ready worker, keyed by their
   best job), take that model's best job (best tenant head, per the queue order), check
   the tenant's quota, and hand the job to the model's best free worker (placement index;
   workers of degraded pools only when the model has no free worker on an online pool).
   Re-seat the model and the worker with their next keys and repeat until no model has
   both a job and a free worker (skipping workers being drained). Cost: O(log n) per
   dispatch; models without a free worker are never looked at, so they do not block the
   others.
2. **Model placement.** For models with queued jobs and *no* live worker (cold), in queue
   order: start a worker on the GPU where the model fits best (least VRAM left over;
   degraded pools only if no online GPU fits); failing that, evict idle workers (LRU/LFU;
   never busy ones, never with ``manual``) on the GPU whose victims cost least and start
   the worker there; failing that, reject the model's jobs with ``NO_CAPACITY`` if no
   registered pool could ever host it (``MODEL_NOT_FOUND`` if nothing knows the model), or
   wait. Then, if ``scale_out``, models whose queued jobs exceed their live worker slots get
   one more worker each on free VRAM (never by eviction). Starting workers count as live
   slots, so the next cycle does not start a second worker for the same demand. At most
   ``max_start_attempts`` models are examined per cycle.
3. **Result.** No action: a :class:`Wait` naming the first reason. One action: that action.
   More: a :class:`Batch`, evictions before the start they make room for.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from orchestrator_core.errors import ConfigInvalid, ErrorCode, OrchestratorError
from orchestrator_core.pools import PoolStatus
from orchestrator_core.scheduling.decisions import (
    Action,
    Batch,
    Decision,
    Dispatch,
    EvictWorker,
    Reject,
    StartWorker,
    Wait,
)
from orchestrator_core.scheduling.eviction import (
    EvictionPolicy,
    LfuEviction,
    LruEviction,
    ManualEviction,
)
from orchestrator_core.scheduling.ordering import (
    FairShareOrder,
    FifoOrder,
    PriorityOrder,
    QueueOrder,
)
from orchestrator_core.scheduling.placement import (
    LeastLoadedPlacement,
    MostVramFreePlacement,
    Placement,
    RoundRobinPlacement,
)
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig
    from orchestrator_core.scheduling.state import ClusterState, _Worker

__all__ = [
    "BUILTIN_POLICIES",
    "EVICTIONS",
    "PLACEMENTS",
    "BuiltinScheduler",
    "Scheduler",
    "SchedulerFactory",
    "SchedulerMismatch",
    "SchedulerRegistry",
    "build_eviction",
    "build_placement",
    "build_queue_order",
    "build_scheduler",
    "builtin_scheduler_from_config",
    "default_registry",
]

BUILTIN_POLICIES = ("fifo", "priority", "fair-share")
"""``scheduler.policy`` values the built-in scheduler serves."""

PLACEMENTS: dict[str, Callable[[], Placement]] = {
    "least-loaded": LeastLoadedPlacement,
    "most-vram-free": MostVramFreePlacement,
    "round-robin": RoundRobinPlacement,
}
"""Placement plugins by name."""

EVICTIONS: dict[str, Callable[[float], EvictionPolicy]] = {
    "lru": LruEviction,
    "lfu": LfuEviction,
    "manual": ManualEviction,
}
"""Eviction plugins by name (the argument is ``min_idle_s``)."""

_MAX_WAITING_NOTES = 8


@runtime_checkable
class Scheduler(Protocol):
    """Decides what to do next from a read-only snapshot (seed ORCH-CORE-002)."""

    @property
    def name(self) -> str:
        """Policy name, for metrics, logs and ``GET /v2/scheduler``."""
        ...

    def schedule(self, snapshot: SchedulingSnapshot) -> Decision:
        """One decision: a single action, or a batch of actions for this cycle."""
        ...


class SchedulerMismatch(OrchestratorError):
    """A scheduler was handed a snapshot of a state indexed for another order/placement."""

    code = ErrorCode.SCHEDULER_ERROR


# -- building blocks from the configuration ----------------------------------------------------


def build_queue_order(config: OrchestratorConfig) -> QueueOrder:
    """The queue order of ``config``: ``fifo``; ``priority`` (fair within a priority when
    ``queue.fairness`` is ``tenant`` or ``session``); ``fair-share`` (by ``queue.fairness``,
    tenants by default). Scripted policies (``rhai``, ``rules``) see the priority order.
    Weights: ``tenants[].weight``, overridden by ``queue.fairness_weights``."""
    policy = config.scheduler.policy
    queue = config.queue
    if policy == "fifo":
        return FifoOrder()
    if policy == "fair-share" or queue.fairness != "none":
        by: Literal["tenant", "session"] = "session" if queue.fairness == "session" else "tenant"
        weights = {t.tenant_id: t.weight for t in config.tenants} if by == "tenant" else {}
        weights.update(queue.fairness_weights)
        return FairShareOrder(by=by, weights=weights, promote_after_s=queue.promote_after_s)
    return PriorityOrder(queue.promote_after_s)


def build_placement(config: OrchestratorConfig | str) -> Placement:
    """The placement named by ``config.scheduler.placement`` (or given by name)."""
    name = config if isinstance(config, str) else config.scheduler.placement
    factory = PLACEMENTS.get(name)
    if factory is None:
        raise ConfigInvalid(
            [f"scheduler.placement: must be one of {', '.join(PLACEMENTS)}, got {name!r}"]
        )
    return factory()


def build_eviction(config: OrchestratorConfig | str, min_idle_s: float = 0.0) -> EvictionPolicy:
    """The eviction policy named by ``config.eviction.policy`` (or given by name)."""
    if isinstance(config, str):
        name = config
    else:
        name, min_idle_s = config.eviction.policy, config.eviction.min_idle_s
    factory = EVICTIONS.get(name)
    if factory is None:
        raise ConfigInvalid(
            [f"eviction.policy: must be one of {', '.join(EVICTIONS)}, got {name!r}"]
        )
    return factory(min_idle_s)


# -- the cycle's overlay -------------------------------------------------------------------------


class _Merge:
    """Walks a sorted list that stays frozen during the cycle, merged with a heap of entries
    re-inserted with worse keys. Each entity is pushed only after it was popped, so it is
    never present twice."""

    __slots__ = ("heap", "pos", "sl")

    def __init__(self, sl: Any) -> None:
        self.sl = sl
        self.pos = 0
        self.heap: list[Any] = []

    def peek(self) -> Any:
        item = self.sl[self.pos] if self.pos < len(self.sl) else None
        if self.heap and (item is None or self.heap[0] < item):
            return self.heap[0]
        return item

    def pop(self) -> Any:
        item = self.sl[self.pos] if self.pos < len(self.sl) else None
        if self.heap and (item is None or self.heap[0] < item):
            return heapq.heappop(self.heap)
        self.pos += 1
        return item

    def push(self, item: Any) -> None:
        heapq.heappush(self.heap, item)

    def upcoming(self, n: int) -> list[Any]:
        """The next ``n`` entries without consuming them."""
        ahead = list(self.sl.islice(self.pos, self.pos + n))
        return sorted(ahead + heapq.nsmallest(n, self.heap))[:n]


class _Cycle:
    """What this cycle has decided so far, on top of the (unchanged) state."""

    def __init__(self, state: ClusterState, now: float) -> None:
        self.state = state
        self.now = now
        self.actions: list[Action] = []
        self.waiting: list[dict[str, Any]] = []
        self.workers: dict[str, tuple[_Merge, _Merge] | None] = {}
        self.groups: dict[tuple[str, int], _Merge] = {}
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
        self.seq = state._seq

    def worker_merges(self, model_ref: str) -> tuple[_Merge, _Merge] | None:
        if model_ref in self.workers:
            return self.workers[model_ref]
        idx = self.state._free.get(model_ref)
        merges = None if idx is None else (_Merge(idx[0].sl), _Merge(idx[1].sl))
        self.workers[model_ref] = merges
        return merges

    def top_worker(self, merges: tuple[_Merge, _Merge]) -> tuple[_Merge, str] | None:
        """The merge holding the best usable worker (online first), skipping withheld ones."""
        for merge, label in ((merges[0], "online"), (merges[1], "degraded")):
            while (item := merge.peek()) is not None:
                if item[1] not in self.withheld:
                    return merge, label
                merge.pop()
        return None

    def group_merge(self, model_ref: str, cls: int) -> _Merge:
        merge = self.groups.get((model_ref, cls))
        if merge is None:
            merge = self.groups[(model_ref, cls)] = _Merge(
                self.state._models[model_ref].heads[cls].sl
            )
        return merge


# -- the built-in scheduler ----------------------------------------------------------------------


class BuiltinScheduler:
    """The built-in scheduler: queue order and placement come from the state's indexes;
    this object adds eviction, model placement, quotas and the batch limits.

    Arguments:
        name: policy name shown to operators (``fifo``, ``priority``, ``fair-share``).
        order: the queue order name the state must be indexed by (``None``: any).
        placement: the placement name the state must be indexed by (``None``: any).
        eviction: eviction policy (default LRU).
        scale_out: start extra workers on free VRAM for models whose queue exceeds their
            live worker slots (never by evicting).
        drain_after_s: when the oldest job of a model without workers has waited this long
            and only busy workers block it, stop giving new jobs to those workers (on the
            GPU where that frees the VRAM soonest) so that they go idle and can be evicted;
            ``None`` = never drain (jobs then wait until the blocking workers are idle). Not
            with ``manual`` eviction.
        max_drains: at most this many models get a drain per decision.
        max_actions: at most this many actions per decision.
        max_start_attempts: at most this many models examined for a start per decision.
        retry_after_ms: the ``retry_after_ms`` hint of a :class:`Wait`.
        runners_up: how many runners-up each explanation lists.
    """

    def __init__(
        self,
        *,
        name: str = "priority",
        order: str | None = None,
        placement: str | None = None,
        eviction: EvictionPolicy | None = None,
        scale_out: bool = True,
        drain_after_s: float | None = 60.0,
        max_drains: int = 2,
        max_actions: int = 256,
        max_start_attempts: int = 16,
        retry_after_ms: int = 1000,
        runners_up: int = 2,
    ) -> None:
        if max_actions < 1 or max_start_attempts < 0 or retry_after_ms < 0 or runners_up < 0:
            raise ValueError("scheduler limits must be positive")
        self._name = name
        self.order = order
        self.placement = placement
        self.eviction: EvictionPolicy = eviction if eviction is not None else LruEviction()
        self.scale_out = scale_out
        self.drain_after_s = drain_after_s
        self.max_drains = max_drains
        self.max_actions = max_actions
        self.max_start_attempts = max_start_attempts
        self.retry_after_ms = retry_after_ms
        self.runners_up = runners_up

    @property
    def name(self) -> str:
        """Policy name."""
        return self._name

    def __repr__(self) -> str:
        return (
            f"BuiltinScheduler(name={self._name!r}, order={self.order!r},"
            f" placement={self.placement!r}, eviction={self.eviction.name!r})"
        )

    def check(self, snapshot: SchedulingSnapshot) -> None:
        """Raise :class:`SchedulerMismatch` if the snapshot's state is indexed for another
        order or placement than this scheduler was configured with."""
        state = snapshot._fresh()
        for what, want, have in (
            ("order", self.order, state.order.name),
            ("placement", self.placement, state.placement.name),
        ):
            if want is not None and want != have:
                raise SchedulerMismatch(
                    f"scheduler {self._name!r} expects a cluster state with {what} {want!r},"
                    f" got {have!r}: call ClusterState.reindex() after a policy change"
                )

    # -- the cycle ---------------------------------------------------------------------------

    def schedule(self, snapshot: SchedulingSnapshot) -> Decision:
        """One scheduling cycle (see the module docstring)."""
        self.check(snapshot)
        state = snapshot._fresh()
        cycle = _Cycle(state, snapshot.now)
        actions, waiting = cycle.actions, cycle.waiting
        self._drain_pass(cycle)
        self._dispatch_pass(cycle)
        self._placement_pass(cycle)
        counts = Counter(a.action for a in actions)
        summary = {
            "scheduler": self._name,
            "ordering": state.order.name,
            "placement": state.placement.name,
            "eviction": self.eviction.name,
            "queued": len(state),
            "actions": dict(counts),
            "waiting": waiting[:_MAX_WAITING_NOTES],
        }
        if not actions:
            if waiting:
                reason = str(waiting[0]["reason"])
            elif len(state) == 0:
                reason = "queue_empty"
            else:
                reason = "no_free_worker"
            return Wait(reason, self.retry_after_ms, explanation=summary)
        if len(actions) == 1:
            return actions[0]
        return Batch(tuple(actions), explanation=summary)

    def _dispatch_pass(self, cycle: _Cycle) -> None:
        state, actions = cycle.state, cycle.actions
        placement = state.placement
        reject_over_quota = state.enforce_quotas and state.quota_action == "reject"
        for cls in (0, 1):
            models = _Merge(state._dispatchable[cls].sl)
            while len(actions) < self.max_actions:
                top = models.peek()
                if top is None:
                    break
                model_ref: str = top[1]
                merges = cycle.worker_merges(model_ref)
                top_worker = None if merges is None else cycle.top_worker(merges)
                if top_worker is None:
                    models.pop()
                    continue
                groups = cycle.group_merge(model_ref, cls)
                head = groups.peek()
                if head is None:
                    models.pop()
                    continue
                tenant: str = head[1]
                group = state._models[model_ref].groups[tenant]
                at = cycle.consumed[(model_ref, tenant, cls)]
                job_id: str = group.lists[cls][at][2]
                qj = state._jobs[job_id]
                quota = state._tenants.get(tenant)
                if (
                    state.enforce_quotas
                    and quota is not None
                    and quota.max_running is not None
                    and quota.running + cycle.tenant_started[tenant] >= quota.max_running
                ):
                    if reject_over_quota:
                        actions.append(
                            Reject(
                                job_id,
                                ErrorCode.QUOTA_EXCEEDED,
                                f"tenant {tenant!r} is at its quota of"
                                f" {quota.max_running} running jobs",
                                explanation={
                                    "reason": "quota_exceeded",
                                    "tenant_id": tenant,
                                    "max_running": quota.max_running,
                                    "running": quota.running + cycle.tenant_started[tenant],
                                },
                            )
                        )
                        cycle.rejected.add(job_id)
                        self._consume(cycle, models, groups, (model_ref, tenant, cls), at)
                    else:
                        groups.pop()  # this tenant waits for the rest of the cycle
                        models.pop()
                        nxt = groups.peek()
                        if nxt is not None:
                            models.push((nxt[0], model_ref))
                    continue
                merge, pool_status = top_worker
                key, worker_id = merge.pop()
                worker = state._workers[worker_id]
                cycle.assigned[worker_id] += 1
                active = worker.active() + cycle.assigned[worker_id]
                if active < worker.max_concurrency:
                    cycle.seq += 1
                    merge.push(
                        (
                            placement.key(
                                active / worker.max_concurrency,
                                state._gpu_free_of(worker),
                                cycle.seq,
                                worker_id,
                            ),
                            worker_id,
                        )
                    )
                explanation = {
                    "ordering": state.order.name,
                    "class": qj.class_name,
                    "key": [qj.tag, qj.seq],
                    "filter": {
                        "model_ref": model_ref,
                        "pool_status": pool_status,
                        "free_workers": len(merge.sl),
                    },
                    "placement": placement.name,
                    "score": placement.describe(key),
                    "runners_up": [
                        {"worker_id": wid, "score": placement.describe(k)}
                        for k, wid in merge.upcoming(self.runners_up)
                    ],
                }
                actions.append(Dispatch(job_id, worker_id, worker.pool_id, explanation))
                cycle.tenant_started[tenant] += 1
                cycle.dispatched[model_ref] += 1
                self._consume(cycle, models, groups, (model_ref, tenant, cls), at)

    @staticmethod
    def _consume(
        cycle: _Cycle, models: _Merge, groups: _Merge, where: tuple[str, str, int], at: int
    ) -> None:
        """The head job of (model, tenant, cls) is taken: advance the group and the model."""
        model_ref, tenant, cls = where
        cycle.consumed[where] = at + 1
        groups.pop()
        lst = cycle.state._models[model_ref].groups[tenant].lists[cls]
        if at + 1 < len(lst):
            nxt = lst[at + 1]
            groups.push(((nxt[0], nxt[1]), tenant))
        models.pop()
        head = groups.peek()
        if head is not None:
            models.push((head[0], model_ref))

    # -- model placement ---------------------------------------------------------------------

    def _placement_pass(self, cycle: _Cycle) -> None:
        state, actions = cycle.state, cycle.actions
        handled: set[str] = set()
        attempts = 0
        kinds: list[tuple[str, Any]] = [("cold", state._cold)]
        if self.scale_out:
            kinds.append(("scale", state._scaling))
        for kind, index in kinds:
            for cls in (0, 1):
                for _key, model_ref in index[cls].sl:
                    if len(actions) >= self.max_actions or attempts >= self.max_start_attempts:
                        return
                    if model_ref in handled:
                        continue
                    handled.add(model_ref)
                    mq = state._models[model_ref]
                    if kind == "scale":
                        demand = mq.unparked - cycle.dispatched[model_ref]
                        if demand <= state._live[model_ref]:
                            continue
                    attempts += 1
                    job_id = self._head_job(state, cycle, model_ref, cls)
                    self._place(cycle, model_ref, kind, job_id)

    @staticmethod
    def _head_job(state: ClusterState, cycle: _Cycle, model_ref: str, cls: int) -> str | None:
        merge = cycle.groups.get((model_ref, cls))
        head = merge.peek() if merge is not None else state._models[model_ref].heads[cls].first()
        if head is None:
            return None
        tenant = head[1]
        at = cycle.consumed[(model_ref, tenant, cls)]
        lst = state._models[model_ref].groups[tenant].lists[cls]
        return str(lst[at][2]) if at < len(lst) else None

    def _place(self, cycle: _Cycle, model_ref: str, kind: str, job_id: str | None) -> None:
        state, actions, waiting = cycle.state, cycle.actions, cycle.waiting
        need = state.model_vram(model_ref)
        note = {"model_ref": model_ref, "job_id": job_id, "need_vram_bytes": need}
        if not state.model_known(model_ref):
            if not state._pools:
                waiting.append({**note, "reason": "no_pools"})
            else:
                self._reject_model(
                    cycle,
                    model_ref,
                    ErrorCode.MODEL_NOT_FOUND,
                    f"no catalog entry, pool or worker knows model {model_ref!r}",
                    {"reason": "model_not_found", "model_ref": model_ref},
                )
            return
        fit = self._best_fit(cycle, model_ref, need)
        if fit is not None:
            (left, pool_id, gpu_id, status), runners = fit
            cycle.reserved[(pool_id, gpu_id)] += need
            actions.append(
                StartWorker(
                    pool_id,
                    gpu_id,
                    model_ref,
                    "cold_start" if kind == "cold" else "scale_out",
                    explanation={
                        **note,
                        "fit": "best-fit",
                        "pool_status": status,
                        "leftover_bytes": left,
                        "live_slots": state._live[model_ref],
                        "queued": state._models[model_ref].unparked,
                        "runners_up": [
                            {"pool_id": p, "gpu_id": g, "leftover_bytes": lo}
                            for lo, p, g, _s in runners
                        ],
                    },
                )
            )
            return
        if kind == "scale":
            return  # scale-out never evicts; the model is served, just not fast enough
        if self.eviction.automatic:
            plan = self._eviction_plan(cycle, model_ref, need, self._rank(state, job_id))
            if plan is not None:
                cost, left, pool_id, gpu_id, victims, plan_runners = plan
                for victim in victims:
                    cycle.evicted.add(victim.worker_id)
                    share = state._share(victim)
                    for gid in victim.gpu_ids:
                        cycle.released[(victim.pool_id, gid)] += share
                    actions.append(
                        EvictWorker(
                            victim.worker_id,
                            victim.pool_id,
                            f"make_room_for:{model_ref}",
                            explanation={
                                "policy": self.eviction.name,
                                "for_model": model_ref,
                                "for_job": job_id,
                                "gpu_id": gpu_id,
                                "model_ref": victim.model_ref,
                                "last_used_at": victim.last_used_at,
                                "jobs_completed": victim.jobs_completed,
                                "vram_bytes": state._vram(victim),
                            },
                        )
                    )
                cycle.reserved[(pool_id, gpu_id)] += need
                actions.append(
                    StartWorker(
                        pool_id,
                        gpu_id,
                        model_ref,
                        "cold_start_after_eviction",
                        explanation={
                            **note,
                            "fit": "eviction",
                            "eviction": self.eviction.name,
                            "evicted": [v.worker_id for v in victims],
                            "plan_cost": list(cost),
                            "leftover_bytes": left,
                            "runners_up": plan_runners,
                        },
                    )
                )
                return
        ever = state.could_ever_fit(model_ref)
        if ever is None:
            waiting.append({**note, "reason": "no_pools"})
            return
        if not ever:
            largest = max((g.totals[-1] for g in state._gpu_groups.values() if g.totals), default=0)
            self._reject_model(
                cycle,
                model_ref,
                ErrorCode.NO_CAPACITY,
                f"no pool can ever run model {model_ref!r}: it needs {need} bytes of VRAM",
                {
                    "reason": "no_pool_fits",
                    "model_ref": model_ref,
                    "need_vram_bytes": need,
                    "largest_gpu_bytes": largest,
                },
            )
            return
        usable = any(
            g.totals and g.totals[-1] >= need
            for status in (PoolStatus.ONLINE, PoolStatus.DEGRADED)
            for g in state._gpu_groups_for(model_ref, status)
        )
        if not usable:
            reason = "pools_unavailable"
        elif not self.eviction.automatic:
            reason = "eviction_manual"
        elif model_ref in cycle.drains:
            reason = "draining"
            note.update(cycle.drains[model_ref])
        else:
            reason = "vram_busy"
        waiting.append({**note, "reason": reason})

    def _reject_model(
        self, cycle: _Cycle, model_ref: str, code: ErrorCode, message: str, note: dict[str, Any]
    ) -> None:
        """Reject the queued jobs of a model nothing can run, in queue order, within budget."""
        actions = cycle.actions
        mq = cycle.state._models[model_ref]
        for cls in (0, 1):
            for tenant, group in mq.groups.items():
                start = cycle.consumed[(model_ref, tenant, cls)]
                for entry in group.lists[cls].islice(start):
                    if len(actions) >= self.max_actions:
                        return
                    job_id = entry[2]
                    if job_id in cycle.rejected:
                        continue
                    cycle.rejected.add(job_id)
                    actions.append(Reject(job_id, code, message, explanation=note))

    def _best_fit(
        self, cycle: _Cycle, model_ref: str, need: int
    ) -> tuple[tuple[int, str, str, str], list[tuple[int, str, str, str]]] | None:
        """The GPU with the least VRAM left over after placing ``need`` (online pools first,
        degraded ones only if no online GPU fits), with runners-up."""
        state = cycle.state
        for status in (PoolStatus.ONLINE, PoolStatus.DEGRADED):
            found: list[tuple[int, str, str, str]] = []
            for group in state._gpu_groups_for(model_ref, status):
                sl = group.free_idx
                i = sl.bisect_left((need,))
                fits = 0
                while i < len(sl) and fits <= self.runners_up:
                    _free, pool_id, gpu_id = sl[i]
                    i += 1
                    key = (pool_id, gpu_id)
                    gpu = state._pools[pool_id].gpus[gpu_id]
                    free = gpu.free_after(cycle.released[key], cycle.reserved[key])
                    if free >= need:
                        found.append((free - need, pool_id, gpu_id, str(status)))
                        fits += 1
            if found:
                found.sort()
                return found[0], found[1 : 1 + self.runners_up]
        return None

    @staticmethod
    def _rank(state: ClusterState, job_id: str | None) -> tuple[int, tuple[float, int]]:
        """Queue rank ``(class, key)`` of a job (past every job if unknown)."""
        job = None if job_id is None else state._jobs.get(job_id)
        return (2, (0.0, 0)) if job is None else (job.cls, (job.tag, job.seq))

    @staticmethod
    def _protected(state: ClusterState, model_ref: str, rank: tuple[int, Any]) -> bool:
        """Whether workers of ``model_ref`` are still needed ahead of a job of this rank: the
        model has a queued job before it. Such workers are never evicted or drained for it,
        so that two models cannot take a GPU from each other before either ran a job."""
        mq = state._models.get(model_ref)
        if mq is None:
            return False
        for cls in (0, 1):
            first = mq.heads[cls].first()
            if first is not None and (cls, first[0]) < rank:
                return True
        return False

    def _eviction_plan(
        self, cycle: _Cycle, model_ref: str, need: int, rank: tuple[int, Any]
    ) -> tuple[tuple[Any, ...], int, str, str, list[_Worker], list[dict[str, Any]]] | None:
        """Idle workers to evict so that ``need`` fits, on the GPU where that costs least;
        workers whose model has a queued job ranked before ``rank`` are not candidates."""
        state, now = cycle.state, cycle.now
        policy = self.eviction
        for status in (PoolStatus.ONLINE, PoolStatus.DEGRADED):
            plans: list[tuple[tuple[Any, ...], int, str, str, list[_Worker]]] = []
            for group in state._gpu_groups_for(model_ref, status):
                sl = group.reclaim_idx
                i = sl.bisect_left((need,))
                tried = 0
                while i < len(sl) and tried < 8:
                    _reclaim, pool_id, gpu_id = sl[i]
                    i += 1
                    tried += 1
                    key = (pool_id, gpu_id)
                    if cycle.reserved[key]:
                        continue
                    gpu = state._pools[pool_id].gpus[gpu_id]
                    candidates = []
                    for wid in gpu.workers:
                        w = state._workers.get(wid)
                        if (
                            w is None
                            or not w.c_idle
                            or wid in cycle.evicted
                            or cycle.assigned[wid]
                            or (
                                w.last_used_at is not None
                                and now - w.last_used_at < policy.min_idle_s
                            )
                            or self._protected(state, w.model_ref, rank)
                        ):
                            continue
                        candidates.append(w)
                    candidates.sort(key=policy.victim_key)
                    freed = cycle.released[key]
                    victims: list[_Worker] = []
                    for w in candidates:
                        if gpu.free_after(freed) >= need:
                            break
                        victims.append(w)
                        freed += state._share(w)
                    got = gpu.free_after(freed)
                    if got < need or not victims:
                        continue
                    plans.append((policy.plan_cost(victims), got - need, pool_id, gpu_id, victims))
            if plans:
                plans.sort(key=lambda p: (p[0], p[1], p[2], p[3]))
                cost, left, pool_id, gpu_id, victims = plans[0]
                runners = [
                    {"pool_id": p, "gpu_id": g, "plan_cost": list(c)}
                    for c, _l, p, g, _vs in plans[1 : 1 + self.runners_up]
                ]
                return cost, left, pool_id, gpu_id, victims, runners
        return None

    # -- draining ----------------------------------------------------------------------------

    def _drain_pass(self, cycle: _Cycle) -> None:
        """Withhold new jobs from the workers blocking a long-waiting cold model."""
        if self.drain_after_s is None or not self.eviction.automatic or not self.max_drains:
            return
        state = cycle.state
        cutoff = cycle.now - self.drain_after_s
        examined = 0
        for cls in (0, 1):
            for _key, model_ref in state._cold[cls].sl:
                if len(cycle.drains) >= self.max_drains or examined >= self.max_start_attempts:
                    return
                if model_ref in cycle.drains:
                    continue
                examined += 1
                job_id = self._head_job(state, cycle, model_ref, cls)
                job = None if job_id is None else state._jobs.get(job_id)
                if job is None or job.queued_at > cutoff:
                    continue
                need = state.model_vram(model_ref)
                if (
                    not state.model_known(model_ref)
                    or not state.could_ever_fit(model_ref)
                    or self._best_fit(cycle, model_ref, need) is not None
                ):
                    continue  # the placement pass starts it or rejects it
                rank = (job.cls, (job.tag, job.seq))
                idle_plan = self._eviction_plan(cycle, model_ref, need, rank)
                if idle_plan is not None:
                    # idle victims exist now: keep them idle (their own queue would take
                    # them first) so that the placement pass evicts them
                    busy, pool_id, gpu_id, victims = 0, idle_plan[2], idle_plan[3], idle_plan[4]
                else:
                    plan = self._drain_plan(cycle, model_ref, need, rank)
                    if plan is None:
                        continue
                    busy, pool_id, gpu_id, victims = plan
                cycle.withheld.update(v.worker_id for v in victims)
                cycle.drain_gpus.add((pool_id, gpu_id))
                cycle.drains[model_ref] = {
                    "drain_pool_id": pool_id,
                    "drain_gpu_id": gpu_id,
                    "draining": [v.worker_id for v in victims],
                    "busy_jobs": busy,
                    "waited_s": round(cycle.now - job.queued_at, 3),
                }

    def _drain_plan(
        self, cycle: _Cycle, model_ref: str, need: int, rank: tuple[int, Any]
    ) -> tuple[int, str, str, list[_Worker]] | None:
        """Ready or busy workers whose VRAM would fit ``need`` once they stop, on the GPU with
        the fewest active jobs among them (they finish soonest), idle ones first."""
        state = cycle.state
        policy = self.eviction
        for status in (PoolStatus.ONLINE, PoolStatus.DEGRADED):
            plans: list[tuple[int, int, str, str, list[_Worker]]] = []
            for group in state._gpu_groups_for(model_ref, status):
                sl = group.drain_idx
                i = sl.bisect_left((need,))
                tried = 0
                while i < len(sl) and tried < 8:
                    _drainable, pool_id, gpu_id = sl[i]
                    i += 1
                    tried += 1
                    key = (pool_id, gpu_id)
                    if cycle.reserved[key] or key in cycle.drain_gpus:
                        continue
                    gpu = state._pools[pool_id].gpus[gpu_id]
                    candidates = [
                        w
                        for wid in gpu.workers
                        if (w := state._workers.get(wid)) is not None
                        and w.c_drain
                        and wid not in cycle.evicted
                        and not self._protected(state, w.model_ref, rank)
                    ]
                    candidates.sort(key=lambda w: (w.active(), policy.victim_key(w)))
                    freed = cycle.released[key]
                    victims: list[_Worker] = []
                    for w in candidates:
                        if gpu.free_after(freed) >= need:
                            break
                        victims.append(w)
                        freed += state._share(w)
                    if gpu.free_after(freed) < need or not victims:
                        continue
                    busy = sum(w.active() for w in victims)
                    plans.append((busy, len(victims), pool_id, gpu_id, victims))
            if plans:
                busy, _n, pool_id, gpu_id, victims = min(plans, key=lambda p: p[:4])
                return busy, pool_id, gpu_id, victims
        return None

    # -- operator questions ------------------------------------------------------------------

    def explain_job(self, snapshot: SchedulingSnapshot, job_id: str) -> dict[str, Any]:
        """Why a queued job is (still) waiting, in O(log n): its position and class, whether
        its model has free, live or starting workers, and its tenant's quota."""
        state = snapshot._fresh()
        qj = state.get_job(job_id)
        if qj is None:
            worker = state.running_worker(job_id)
            if worker is not None:
                return {"job_id": job_id, "state": "running", "worker_id": worker}
            return {"job_id": job_id, "state": "unknown"}
        model_ref = qj.model_ref
        idx = state._free.get(model_ref)
        free = 0 if idx is None else len(idx[0]) + len(idx[1])
        live = state._live[model_ref]
        tenant = state.tenant_view(qj.tenant_key)
        parked = state.enforce_quotas and tenant.at_running_quota
        if parked:
            reason = "quota"
        elif free:
            reason = "behind_other_jobs"
        elif live:
            reason = "no_free_worker"
        elif not state.model_known(model_ref):
            reason = "model_not_found"
        elif state.could_ever_fit(model_ref) is False:
            reason = "no_capacity"
        else:
            reason = "waiting_for_worker_start"
        return {
            "job_id": job_id,
            "state": "queued",
            "reason": reason,
            "position": state.position(job_id),
            "class": qj.class_name,
            "ordering": state.order.name,
            "model_ref": model_ref,
            "free_workers": free,
            "live_slots": live,
            "queued_for_model": state._models[model_ref].queued,
            "tenant_id": qj.tenant_key,
            "tenant_running": tenant.running,
            "tenant_max_running": tenant.max_running,
        }


# -- registry --------------------------------------------------------------------------------

SchedulerFactory = Callable[["OrchestratorConfig"], Scheduler]
"""Builds a scheduler from the configuration."""


def builtin_scheduler_from_config(config: OrchestratorConfig) -> BuiltinScheduler:
    """The built-in scheduler for ``config``. For scripted policies (``rhai``, ``rules``)
    this is the fallback that ``platform_schedule(ctx)`` runs; it is named ``platform``."""
    policy = config.scheduler.policy
    return BuiltinScheduler(
        name=policy if policy in BUILTIN_POLICIES else "platform",
        order=build_queue_order(config).name,
        placement=config.scheduler.placement,
        eviction=build_eviction(config),
        scale_out=config.scheduler.scale_out,
        drain_after_s=config.scheduler.drain_after_s,
        max_drains=config.scheduler.max_drains,
        max_actions=config.scheduler.max_actions,
    )


class SchedulerRegistry:
    """Scheduler factories by ``scheduler.policy`` name. Not global: build one with
    :func:`default_registry` and add to it (the Rhai engine registers ``rhai``/``rules``)."""

    def __init__(self) -> None:
        self._factories: dict[str, SchedulerFactory] = {}

    def register(self, name: str, factory: SchedulerFactory, *, replace: bool = False) -> None:
        """Add a factory; refuses to replace one unless ``replace``."""
        if name in self._factories and not replace:
            raise ValueError(f"a scheduler named {name!r} is already registered")
        self._factories[name] = factory

    def names(self) -> list[str]:
        """Registered policy names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def build(self, config: OrchestratorConfig) -> Scheduler:
        """The scheduler for ``config.scheduler.policy``; :class:`ConfigInvalid` if none."""
        policy = config.scheduler.policy
        factory = self._factories.get(policy)
        if factory is None:
            raise ConfigInvalid(
                [
                    f"scheduler.policy: no scheduler registered for {policy!r}"
                    f" (registered: {', '.join(self.names())})"
                ]
            )
        return factory(config)


def default_registry() -> SchedulerRegistry:
    """A new registry with the built-in policies ``fifo``, ``priority`` and ``fair-share``."""
    registry = SchedulerRegistry()
    for name in BUILTIN_POLICIES:
        registry.register(name, builtin_scheduler_from_config)
    return registry


def build_scheduler(
    config: OrchestratorConfig, registry: SchedulerRegistry | None = None
) -> Scheduler:
    """The scheduler named by ``config.scheduler.policy`` (from ``registry``, default: the
    built-ins). Pair it with ``ClusterState.from_config(config)``, which indexes the state
    for the same queue order and placement."""
    return (registry or default_registry()).build(config)
