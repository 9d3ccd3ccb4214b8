"""The built-in scheduler's model placement: which models get a worker started, where.

* :func:`drain_pass` (before dispatching). A cold model whose oldest job has waited
  ``drain_after_s`` and that no free VRAM can host: the workers that would make room (idle
  ones if an eviction plan exists now, else those on the GPU with the fewest active jobs)
  get no new job this cycle, so they can be evicted now or once idle. Until then loaded
  models keep their workers busy (no model thrashing); busy workers are never evicted, they
  are drained.
* :func:`placement_pass` (after dispatching). For models with queued jobs and no live
  worker (cold), in queue order: start a worker on the GPU where the model fits best;
  failing that, evict idle workers on the GPU whose victims cost least and start it there;
  failing that, reject the model's jobs with ``NO_CAPACITY`` if no registered pool could
  ever host it (``MODEL_NOT_FOUND`` if nothing knows the model), or wait. Then, with
  ``scale_out``, models whose queued jobs exceed their live worker slots get one more worker
  each on free VRAM (never by eviction). At most ``max_start_attempts`` models are examined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator_core.errors import ErrorCode
from orchestrator_core.scheduling.cycle import Cycle
from orchestrator_core.scheduling.decisions import EvictWorker, Reject, StartWorker
from orchestrator_core.scheduling.gpu_search import (
    STATUSES,
    Fit,
    best_fit,
    drain_plans,
    eviction_plans,
)
from orchestrator_core.scheduling.indexes import SortedSeq

__all__ = ["drain_pass", "placement_pass"]


def drain_pass(cycle: Cycle) -> None:
    """Withhold new jobs from the workers blocking a long-waiting cold model."""
    limits = cycle.limits
    if limits.drain_after_s is None or not limits.eviction.automatic or not limits.max_drains:
        return
    snap = cycle.snap
    cutoff = cycle.now - limits.drain_after_s
    examined = 0
    for cls in (0, 1):
        for _key, model_ref in snap.cold_models(cls):
            if len(cycle.drains) >= limits.max_drains or examined >= limits.max_start_attempts:
                return
            if model_ref in cycle.drains:
                continue
            examined += 1
            job_id = cycle.head_job(model_ref, cls)
            job = None if job_id is None else snap.job(job_id)
            if job is None or job.queued_at > cutoff:
                continue
            need = snap.model_vram(model_ref)
            if (
                not snap.model_known(model_ref)
                or not snap.could_ever_fit(model_ref)
                or best_fit(cycle, model_ref, need) is not None
            ):
                continue  # the placement pass starts it or rejects it
            rank = (job.cls, (job.tag, job.seq))
            # idle victims exist now: keep them idle (their own queue would take them first)
            # so that the placement pass evicts them; else drain busy ones
            busy = 0
            plans = eviction_plans(cycle, model_ref, need, rank)
            if not plans:
                plans = drain_plans(cycle, model_ref, need, rank)
                if not plans:
                    continue
                busy = plans[0].rank[0]
            plan = plans[0]
            cycle.withheld.update(v.worker_id for v in plan.victims)
            cycle.drain_gpus.add((plan.pool_id, plan.gpu_id))
            cycle.drains[model_ref] = {
                "drain_pool_id": plan.pool_id,
                "drain_gpu_id": plan.gpu_id,
                "draining": [v.worker_id for v in plan.victims],
                "busy_jobs": busy,
                "waited_s": round(cycle.now - job.queued_at, 3),
            }


def placement_pass(cycle: Cycle) -> None:
    """Add this cycle's worker starts (with their evictions) and model rejections."""
    snap, limits = cycle.snap, cycle.limits
    handled: set[str] = set()
    attempts = 0
    kinds: list[tuple[str, Callable[[int], SortedSeq]]] = [("cold", snap.cold_models)]
    if limits.scale_out:
        kinds.append(("scale", snap.scaling_models))
    for kind, index in kinds:
        for cls in (0, 1):
            for _key, model_ref in index(cls):
                if cycle.full() or attempts >= limits.max_start_attempts:
                    return
                if model_ref in handled:
                    continue
                handled.add(model_ref)
                if kind == "cold":
                    attempts += 1
                    _place_cold(cycle, model_ref, cycle.head_job(model_ref, cls))
                    continue
                demand = snap.model_demand(model_ref) - cycle.dispatched[model_ref]
                if demand > snap.live_slots(model_ref):
                    attempts += 1
                    _scale_out(cycle, model_ref, cls)


def _place_cold(cycle: Cycle, model_ref: str, job_id: str | None) -> None:
    """Start a worker of a model with queued jobs and no live worker: on free VRAM, else
    after evicting idle workers; else reject its jobs or note why it waits."""
    snap = cycle.snap
    need = snap.model_vram(model_ref)
    note = {"model_ref": model_ref, "job_id": job_id, "need_vram_bytes": need}
    if not snap.model_known(model_ref):
        if not snap.pool_count():
            cycle.waiting.append({**note, "reason": "no_pools"})
        else:
            _reject_model(
                cycle,
                model_ref,
                ErrorCode.MODEL_NOT_FOUND,
                f"no catalog entry, pool or worker knows model {model_ref!r}",
                {"reason": "model_not_found", "model_ref": model_ref},
            )
        return
    fit = best_fit(cycle, model_ref, need)
    if fit is not None:
        _start(cycle, model_ref, "cold_start", fit, note)
    elif not (cycle.limits.eviction.automatic and _start_after_eviction(cycle, model_ref, note)):
        _cannot_start(cycle, model_ref, note)


def _scale_out(cycle: Cycle, model_ref: str, cls: int) -> None:
    """One more worker for a model with more queued jobs than live slots, on free VRAM only
    (scale-out never evicts: the model is served, just not fast enough). The model is known:
    it has live workers."""
    need = cycle.snap.model_vram(model_ref)
    fit = best_fit(cycle, model_ref, need)
    if fit is not None:
        note = {"model_ref": model_ref, "job_id": cycle.head_job(model_ref, cls)}
        _start(cycle, model_ref, "scale_out", fit, {**note, "need_vram_bytes": need})


def _start(
    cycle: Cycle,
    model_ref: str,
    reason: str,
    fit: tuple[Fit, list[Fit]],
    note: dict[str, Any],
) -> None:
    """Start a worker on the best-fitting GPU ``fit`` found for it."""
    snap = cycle.snap
    (left, pool_id, gpu_id, status), runners = fit
    cycle.reserved[(pool_id, gpu_id)] += note["need_vram_bytes"]
    cycle.actions.append(
        StartWorker(
            pool_id,
            gpu_id,
            model_ref,
            reason,
            explanation={
                **note,
                "fit": "best-fit",
                "pool_status": status,
                "leftover_bytes": left,
                "live_slots": snap.live_slots(model_ref),
                "queued": snap.model_demand(model_ref),
                "runners_up": [
                    {"pool_id": p, "gpu_id": g, "leftover_bytes": lo} for lo, p, g, _s in runners
                ],
            },
        )
    )


def _start_after_eviction(cycle: Cycle, model_ref: str, note: dict[str, Any]) -> bool:
    snap, policy = cycle.snap, cycle.limits.eviction
    need: int = note["need_vram_bytes"]
    job_id: str | None = note["job_id"]
    plans = eviction_plans(cycle, model_ref, need, cycle.rank(job_id))
    if not plans:
        return False
    plan = plans[0]
    for victim in plan.victims:
        cycle.evicted.add(victim.worker_id)
        share = snap.worker_share(victim)
        for gid in victim.gpu_ids:
            cycle.released[(victim.pool_id, gid)] += share
        cycle.actions.append(
            EvictWorker(
                victim.worker_id,
                victim.pool_id,
                f"make_room_for:{model_ref}",
                explanation={
                    "policy": policy.name,
                    "for_model": model_ref,
                    "for_job": job_id,
                    "gpu_id": plan.gpu_id,
                    "model_ref": victim.model_ref,
                    "last_used_at": victim.last_used_at,
                    "jobs_completed": victim.jobs_completed,
                    "vram_bytes": snap.worker_vram(victim),
                },
            )
        )
    cycle.reserved[(plan.pool_id, plan.gpu_id)] += need
    runners = plans[1 : 1 + cycle.limits.runners_up]
    cycle.actions.append(
        StartWorker(
            plan.pool_id,
            plan.gpu_id,
            model_ref,
            "cold_start_after_eviction",
            explanation={
                **note,
                "fit": "eviction",
                "eviction": policy.name,
                "evicted": [v.worker_id for v in plan.victims],
                "plan_cost": list(plan.rank[0]),
                "leftover_bytes": plan.left,
                "runners_up": [
                    {"pool_id": p.pool_id, "gpu_id": p.gpu_id, "plan_cost": list(p.rank[0])}
                    for p in runners
                ],
            },
        )
    )
    return True


def _cannot_start(cycle: Cycle, model_ref: str, note: dict[str, Any]) -> None:
    """No start for a cold model now: reject its jobs if no pool could ever host it, else
    note why it waits."""
    snap = cycle.snap
    need: int = note["need_vram_bytes"]
    ever = snap.could_ever_fit(model_ref)
    if ever is None:
        cycle.waiting.append({**note, "reason": "no_pools"})
        return
    if not ever:
        _reject_model(
            cycle,
            model_ref,
            ErrorCode.NO_CAPACITY,
            f"no pool can ever run model {model_ref!r}: it needs {need} bytes of VRAM",
            {
                "reason": "no_pool_fits",
                "model_ref": model_ref,
                "need_vram_bytes": need,
                "largest_gpu_bytes": snap.largest_gpu() or 0,
            },
        )
        return
    largest = snap.largest_gpu(model_ref, STATUSES)
    if largest is None or largest < need:
        reason = "pools_unavailable"
    elif not cycle.limits.eviction.automatic:
        reason = "eviction_manual"
    elif model_ref in cycle.drains:
        reason = "draining"
        note.update(cycle.drains[model_ref])
    else:
        reason = "vram_busy"
    cycle.waiting.append({**note, "reason": reason})


def _reject_model(
    cycle: Cycle, model_ref: str, code: ErrorCode, message: str, note: dict[str, Any]
) -> None:
    """Reject the queued jobs of a model nothing can run, in queue order, within budget."""
    snap, actions = cycle.snap, cycle.actions
    tenants = snap.model_tenants(model_ref)
    for cls in (0, 1):
        for tenant in tenants:
            start = cycle.consumed[(model_ref, tenant, cls)]
            for entry in snap.tenant_jobs(model_ref, tenant, cls).islice(start):
                if cycle.full():
                    return
                job_id = entry[2]
                if job_id in cycle.rejected:
                    continue
                cycle.rejected.add(job_id)
                actions.append(Reject(job_id, code, message, explanation=note))
