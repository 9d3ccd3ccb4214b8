"""Where a worker start can go: the GPU searches of one built-in decision.

* :func:`best_fit` — the GPU with free VRAM where a start leaves the least over;
* :func:`victim_search` — GPUs where stopping some workers makes a start fit, best plan
  first. One search serves both ways of making room: :func:`eviction_plans` (idle workers,
  evicted now, cheapest for the eviction policy) and :func:`drain_plans` (ready or busy
  workers, drained: no new jobs until they are idle, fewest active jobs first).

Every search looks at online pools first and at degraded pools only if no online GPU will
do, bisects the snapshot's GPU index at the VRAM it needs, and counts the VRAM the decision
already reserved for starts or released by evictions on each GPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator_core.pools import PoolStatus
from orchestrator_core.scheduling.cycle import Cycle, Rank
from orchestrator_core.scheduling.gpu_index import GpuSort
from orchestrator_core.scheduling.records import WorkerRecord
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

__all__ = [
    "STATUSES",
    "Fit",
    "VictimPlan",
    "best_fit",
    "drain_plans",
    "eviction_plans",
    "protected",
    "victim_search",
]

STATUSES = (PoolStatus.ONLINE, PoolStatus.DEGRADED)
"""Pool statuses a start may use, preferred first."""
_GPUS_TRIED = 8  # GPUs a victim search examines per group of interchangeable GPUs

Fit = tuple[int, str, str, str]
"""A GPU a start fits on: ``(VRAM left over, pool_id, gpu_id, pool status)``."""


@dataclass(slots=True)
class VictimPlan:
    """Workers to stop on one GPU so that a start fits there."""

    rank: tuple[Any, ...]
    """The search's measure of the plan, lower is better."""
    left: int
    """VRAM left over once the start is placed."""
    pool_id: str
    gpu_id: str
    victims: list[WorkerRecord]


def best_fit(cycle: Cycle, model_ref: str, need: int) -> tuple[Fit, list[Fit]] | None:
    """The GPU with the least VRAM left over after placing ``need`` (online pools first,
    degraded ones only if no online GPU fits), with runners-up."""
    snap = cycle.snap
    runners_up = cycle.limits.runners_up
    for status in STATUSES:
        found: list[Fit] = []
        for run in snap.gpu_runs(model_ref, status, "free", need):
            fits = 0
            for _free, pool_id, gpu_id in run:
                if fits > runners_up:
                    break
                key = (pool_id, gpu_id)
                gpu = snap.gpu_record(pool_id, gpu_id)
                assert gpu is not None
                free = gpu.free_after(cycle.released[key], cycle.reserved[key])
                if free >= need:
                    found.append((free - need, pool_id, gpu_id, str(status)))
                    fits += 1
        if found:
            found.sort()
            return found[0], found[1 : 1 + runners_up]
    return None


def protected(snap: SchedulingSnapshot, model_ref: str, rank: Rank) -> bool:
    """Whether workers of ``model_ref`` are still needed ahead of a job of this rank: the
    model has a queued job before it. Such workers are never evicted or drained for it, so
    that two models cannot take a GPU from each other before either ran a job."""
    for cls in (0, 1):
        heads = snap.tenant_heads(model_ref, cls)
        if heads and (cls, heads[0][0]) < rank:
            return True
    return False


def victim_search(
    cycle: Cycle,
    model_ref: str,
    need: int,
    *,
    by: GpuSort,
    skip_gpu: Callable[[tuple[str, str]], bool],
    eligible: Callable[[WorkerRecord], bool],
    victim_order: Callable[[WorkerRecord], Any],
    measure: Callable[[list[WorkerRecord], int], tuple[Any, ...]],
) -> list[VictimPlan]:
    """Plans that make ``need`` fit by stopping workers, best first.

    On each GPU that could free enough once its workers stop (GPUs sorted ``by`` that VRAM
    figure, at most eight per group of interchangeable GPUs, ``skip_gpu`` ones passed
    over), take the ``eligible`` workers in ``victim_order`` until the start fits. Plans
    are ranked by ``measure(victims, VRAM left over)``, then pool and GPU; online pools
    first, degraded ones only if no online GPU has a plan.
    """
    snap = cycle.snap
    for status in STATUSES:
        plans: list[VictimPlan] = []
        for run in snap.gpu_runs(model_ref, status, by, need):
            for _bytes, pool_id, gpu_id in itertools.islice(run, _GPUS_TRIED):
                key = (pool_id, gpu_id)
                gpu = snap.gpu_record(pool_id, gpu_id)
                if gpu is None or skip_gpu(key):
                    continue
                candidates = [
                    w
                    for wid in gpu.workers
                    if (w := snap.worker_record(wid)) is not None and eligible(w)
                ]
                candidates.sort(key=victim_order)
                freed = cycle.released[key]
                victims: list[WorkerRecord] = []
                for w in candidates:
                    if gpu.free_after(freed) >= need:
                        break
                    victims.append(w)
                    freed += snap.worker_share(w)
                got = gpu.free_after(freed)
                if got >= need and victims:
                    left = got - need
                    plans.append(VictimPlan(measure(victims, left), left, pool_id, gpu_id, victims))
        if plans:
            plans.sort(key=lambda p: (p.rank, p.pool_id, p.gpu_id))
            return plans
    return []


def eviction_plans(cycle: Cycle, model_ref: str, need: int, rank: Rank) -> list[VictimPlan]:
    """Idle workers to evict so that ``need`` fits, cheapest plan first: the eviction
    policy's plan cost, then the least VRAM left over (a plan's ``rank``: ``(plan cost,
    left over)``). Workers used less than ``min_idle_s`` ago, or whose model has a queued
    job ranked before ``rank``, are not candidates; GPUs a start of this decision took are
    passed over."""
    snap, now = cycle.snap, cycle.now
    policy = cycle.limits.eviction

    def eligible(w: WorkerRecord) -> bool:
        return (
            w.c_idle
            and w.worker_id not in cycle.evicted
            and not cycle.assigned[w.worker_id]
            and (w.last_used_at is None or now - w.last_used_at >= policy.min_idle_s)
            and not protected(snap, w.model_ref, rank)
        )

    return victim_search(
        cycle,
        model_ref,
        need,
        by="reclaimable",
        skip_gpu=lambda key: bool(cycle.reserved[key]),
        eligible=eligible,
        victim_order=policy.victim_key,
        measure=lambda victims, left: (policy.plan_cost(victims), left),
    )


def drain_plans(cycle: Cycle, model_ref: str, need: int, rank: Rank) -> list[VictimPlan]:
    """Ready or busy workers whose VRAM would fit ``need`` once they stop, on the GPU with
    the fewest active jobs among them (they finish soonest), idle ones first (a plan's
    ``rank``: ``(active jobs, number of victims)``). GPUs a start or another drain of this
    decision took are passed over."""
    snap = cycle.snap
    policy = cycle.limits.eviction
    return victim_search(
        cycle,
        model_ref,
        need,
        by="drainable",
        skip_gpu=lambda key: bool(cycle.reserved[key]) or key in cycle.drain_gpus,
        eligible=lambda w: (
            w.c_drain
            and w.worker_id not in cycle.evicted
            and not protected(snap, w.model_ref, rank)
        ),
        victim_order=lambda w: (w.active(), policy.victim_key(w)),
        measure=lambda victims, _left: (sum(w.active() for w in victims), len(victims)),
    )
