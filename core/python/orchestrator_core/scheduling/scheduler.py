"""The Scheduler protocol, the built-in scheduler and the registry that builds one by name.

A scheduler turns a :class:`~orchestrator_core.scheduling.snapshot.SchedulingSnapshot` into
a :data:`~orchestrator_core.scheduling.decisions.Decision`. It reads no clock (``now`` is in
the snapshot) and changes nothing: the daemon validates, applies and executes the decision.

The built-in scheduling cycle (:meth:`BuiltinScheduler.schedule`), each pass in its module:

0. **Drain** (:func:`~orchestrator_core.scheduling.placing.drain_pass`): workers blocking a
   long-waiting cold model get no new job this cycle, so they can be evicted once idle.
1. **Dispatch** (:func:`~orchestrator_core.scheduling.dispatching.dispatch_pass`): queued
   jobs to free workers, in queue order, model by model from the snapshot's dispatchable
   index (no head-of-line blocking), within the tenants' running quotas.
2. **Model placement** (:func:`~orchestrator_core.scheduling.placing.placement_pass`): cold
   models get a worker on the best-fitting GPU, or after evicting idle workers (the GPU
   searches of :mod:`~orchestrator_core.scheduling.gpu_search`), or their jobs are rejected
   when no pool could ever run them; with ``scale_out``, models with more queued jobs than
   live slots get one more worker on free VRAM. Starting workers count as live slots, so
   the next cycle does not start a second worker for the same demand.
3. **Result.** No action: a :class:`Wait` naming the first reason. One action: that action.
   More: a :class:`Batch`, evictions before the start they make room for.

The scheduler reads the state only through the snapshot's public read API; what it has
decided so far lives in a :class:`~orchestrator_core.scheduling.cycle.Cycle`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from orchestrator_core.errors import ConfigInvalid, ErrorCode, OrchestratorError
from orchestrator_core.scheduling.cycle import Cycle, CycleLimits
from orchestrator_core.scheduling.decisions import Batch, Decision, Wait
from orchestrator_core.scheduling.dispatching import dispatch_pass
from orchestrator_core.scheduling.eviction import EvictionPolicy, LruEviction
from orchestrator_core.scheduling.placing import drain_pass, placement_pass
from orchestrator_core.scheduling.plugins import (
    BUILTIN_POLICIES,
    EVICTIONS,
    PLACEMENTS,
    build_eviction,
    build_placement,
    build_queue_order,
)
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig

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

_MAX_WAITING_NOTES = 8


@runtime_checkable
class Scheduler(Protocol):
    """Decides what to do next from a read-only snapshot."""

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
        for what, want, have in (
            ("order", self.order, snapshot.order_name),
            ("placement", self.placement, snapshot.placement_name),
        ):
            if want is not None and want != have:
                raise SchedulerMismatch(
                    f"scheduler {self._name!r} expects a cluster state with {what} {want!r},"
                    f" got {have!r}: call ClusterState.reindex() after a policy change"
                )

    # -- the cycle ---------------------------------------------------------------------------

    def limits(self) -> CycleLimits:
        """The settings one decision works with."""
        return CycleLimits(
            eviction=self.eviction,
            scale_out=self.scale_out,
            drain_after_s=self.drain_after_s,
            max_drains=self.max_drains,
            max_actions=self.max_actions,
            max_start_attempts=self.max_start_attempts,
            runners_up=self.runners_up,
        )

    def schedule(self, snapshot: SchedulingSnapshot) -> Decision:
        """One scheduling cycle (see the module docstring)."""
        self.check(snapshot)
        cycle = Cycle(snapshot, self.limits())
        actions, waiting = cycle.actions, cycle.waiting
        drain_pass(cycle)
        dispatch_pass(cycle)
        placement_pass(cycle)
        counts = Counter(a.action for a in actions)
        queued = snapshot.queued_count()
        summary = {
            "scheduler": self._name,
            "ordering": snapshot.order_name,
            "placement": snapshot.placement_name,
            "eviction": self.eviction.name,
            "queued": queued,
            "actions": dict(counts),
            "waiting": waiting[:_MAX_WAITING_NOTES],
        }
        if not actions:
            if waiting:
                reason = str(waiting[0]["reason"])
            elif queued == 0:
                reason = "queue_empty"
            else:
                reason = "no_free_worker"
            return Wait(reason, self.retry_after_ms, explanation=summary)
        if len(actions) == 1:
            return actions[0]
        return Batch(tuple(actions), explanation=summary)

    # -- operator questions ------------------------------------------------------------------

    def explain_job(self, snapshot: SchedulingSnapshot, job_id: str) -> dict[str, Any]:
        """Why a queued job is (still) waiting, in O(log n): its position and class, whether
        its model has free, live or starting workers, and its tenant's quota."""
        snap = snapshot
        qj = snap.job(job_id)
        if qj is None:
            worker = snap.running_worker(job_id)
            if worker is not None:
                return {"job_id": job_id, "state": "running", "worker_id": worker}
            return {"job_id": job_id, "state": "unknown"}
        model_ref = qj.model_ref
        free = snap.free_worker_count(model_ref)
        live = snap.live_slots(model_ref)
        tenant = snap.tenant(qj.tenant_key)
        parked = snap.enforce_quotas and tenant.at_running_quota
        if parked:
            reason = "quota"
        elif free:
            reason = "behind_other_jobs"
        elif live:
            reason = "no_free_worker"
        elif not snap.model_known(model_ref):
            reason = "model_not_found"
        elif snap.could_ever_fit(model_ref) is False:
            reason = "no_capacity"
        else:
            reason = "waiting_for_worker_start"
        return {
            "job_id": job_id,
            "state": "queued",
            "reason": reason,
            "position": snap.position(job_id),
            "class": qj.class_name,
            "ordering": snap.order_name,
            "model_ref": model_ref,
            "free_workers": free,
            "live_slots": live,
            "queued_for_model": snap.model_queued(model_ref),
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
