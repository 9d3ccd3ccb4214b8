"""Frozen views of the fleet's records, and the fleet's consistency check.

Views (:class:`~orchestrator_core.scheduling.views.WorkerView`, ``GpuView``, ``PoolView``)
are copies made on request for tools, validators and Rhai maps; planners read the records
themselves. :func:`fleet_problems` recomputes the fleet's counts from the records, for tests.
"""

from __future__ import annotations

from collections import Counter

from orchestrator_core.pools import PoolStatus, WorkerStatus
from orchestrator_core.scheduling.fleet_counts import DEGRADED, ONLINE
from orchestrator_core.scheduling.fleet_index import FleetIndex
from orchestrator_core.scheduling.records import WorkerRecord
from orchestrator_core.scheduling.views import GpuView, PoolView, WorkerView

__all__ = [
    "could_ever_fit",
    "fleet_problems",
    "free_worker_views",
    "gpu_view",
    "pool_model_name",
    "pool_view",
    "pool_can_load",
    "pools_by_status",
    "status_counts",
    "worker_view",
]

_LIVE = (WorkerStatus.READY, WorkerStatus.BUSY, WorkerStatus.STARTING)


def worker_view(fleet: FleetIndex, worker_id: str) -> WorkerView | None:
    """One worker with its effective status, or ``None``."""
    w = fleet.workers.get(worker_id)
    if w is None:
        return None
    active = w.active()
    status = w.status()
    pool = fleet.pools.get(w.pool_id)
    usable = pool is not None and pool.status is not PoolStatus.OFFLINE
    return WorkerView(
        worker_id=w.worker_id,
        pool_id=w.pool_id,
        model_ref=w.model_ref,
        gpu_ids=w.gpu_ids,
        status=status,
        reported_status=w.reported_status,
        active_jobs=active,
        max_concurrency=w.max_concurrency,
        free_slots=(
            max(0, w.max_concurrency - active) if usable and status is WorkerStatus.READY else 0
        ),
        vram_bytes=fleet.counts.vram(w),
        uri=w.uri,
        current_job_id=w.current_job_id,
        last_used_at=w.last_used_at,
        jobs_completed=w.jobs_completed,
        pending=w.pending,
        stopping=w.stopping,
    )


def gpu_view(fleet: FleetIndex, pool_id: str, gpu_id: str) -> GpuView | None:
    """One GPU, or ``None``."""
    rec = fleet.pools.get(pool_id)
    gpu = None if rec is None else rec.gpus.get(gpu_id)
    if gpu is None:
        return None
    return GpuView(
        pool_id=pool_id,
        gpu_id=gpu_id,
        name=gpu.name,
        vram_total_bytes=gpu.total,
        vram_free_bytes=gpu.free(),
        vram_reported_free_bytes=gpu.reported_free,
        vram_allocated_bytes=gpu.allocated,
        utilization=gpu.utilization,
        worker_ids=tuple(sorted(gpu.workers)),
    )


def pool_view(fleet: FleetIndex, pool_id: str) -> PoolView | None:
    """One pool, or ``None``."""
    rec = fleet.pools.get(pool_id)
    if rec is None:
        return None
    return PoolView(
        pool_id=rec.pool_id,
        endpoint=rec.endpoint,
        status=rec.status,
        capabilities=rec.capabilities,
        models=tuple(sorted(rec.models)),
        gpu_ids=tuple(rec.gpus),
        worker_ids=tuple(sorted(rec.workers)),
        registered_at=rec.registered_at,
        last_heartbeat=rec.last_heartbeat,
    )


def free_worker_views(fleet: FleetIndex, model_ref: str, limit: int) -> list[WorkerView]:
    """Workers of a canonical model with a free slot, best first by the placement (online
    pools, then degraded ones)."""
    lists = fleet.counts.free_lists(model_ref)
    out: list[WorkerView] = []
    if lists is None:
        return out
    for slot in (ONLINE, DEGRADED):
        for _key, wid in lists[slot].islice(0, max(0, limit - len(out))):
            view = worker_view(fleet, wid)
            if view is not None:
                out.append(view)
    return out


def pool_model_name(fleet: FleetIndex, pool_id: str, model_ref: str) -> str:
    """The name ``pool_id`` itself uses for the canonical ``model_ref`` (see
    :meth:`ClusterState.pool_model_name
    <orchestrator_core.scheduling.state.ClusterState.pool_model_name>`)."""
    rec = fleet.pools.get(pool_id)
    if rec is not None:
        for name in rec.reported_models:
            if name == model_ref:
                return name
        for name in rec.reported_models:
            if fleet.models.resolve(name) == model_ref:
                return name
    return model_ref


def pools_by_status(fleet: FleetIndex) -> dict[str, int]:
    """Pools by status. O(pools)."""
    counts = Counter(str(p.status) for p in fleet.pools.values())
    return {str(s): counts[str(s)] for s in PoolStatus}


def status_counts(fleet: FleetIndex) -> dict[str, int]:
    """Workers by effective status."""
    counts = fleet.counts.status_counts
    return {str(s): counts[s] for s in WorkerStatus}


def pool_can_load(fleet: FleetIndex, pool_id: str, model_ref: str) -> bool:
    """Whether a pool can start workers of a model (it lists it, or lists nothing)."""
    rec = fleet.pools.get(pool_id)
    return rec is not None and rec.can_load(fleet.models.resolve(model_ref))


def could_ever_fit(fleet: FleetIndex, model_ref: str) -> bool | None:
    """Whether some registered pool (in any status) could host a worker of this model: it
    can load the model and has a GPU with enough total VRAM. ``None`` when no pool with
    GPUs is registered at all (nothing can be concluded yet)."""
    gpus = fleet.counts.gpus
    if not gpus:
        return None
    ref = fleet.models.resolve(model_ref)
    largest = gpus.largest(ref)
    return largest is not None and largest >= fleet.models.vram(ref)


def _idle(w: WorkerRecord) -> bool:
    return (
        w.status() is WorkerStatus.READY and w.active() == 0 and not w.pending and w.own_active == 0
    )


def fleet_problems(fleet: FleetIndex) -> list[str]:
    """Recompute the fleet's main counts from the records and list every difference
    (empty when consistent). O(everything): for tests and debugging."""
    problems: list[str] = []
    workers, counts = fleet.workers, fleet.counts
    live: Counter[str] = Counter()
    for w in workers.values():
        rec = fleet.pools.get(w.pool_id)
        usable = rec is not None and rec.status is not PoolStatus.OFFLINE
        if usable and w.status() in _LIVE:
            live[w.model_ref] += w.max_concurrency
        free = usable and w.status() is WorkerStatus.READY
        if free != (w.c_slot is not None):
            problems.append(f"worker {w.worker_id}: free={free} but slot={w.c_slot}")
    for m in set(live) | set(counts.live):
        if live[m] != counts.live[m]:
            problems.append(f"model {m}: live {counts.live[m]} != {live[m]}")
    for rec in fleet.pools.values():
        usable = rec.status is not PoolStatus.OFFLINE
        for gpu in rec.gpus.values():
            on = [workers[w] for w in gpu.workers if w in workers]
            alloc = sum(counts.share(w) for w in on if not w.stopping)
            if alloc != gpu.allocated:
                problems.append(f"gpu {rec.pool_id}/{gpu.gpu_id}: {gpu.allocated} != {alloc}")
            idle = sum(counts.share(w) for w in on if usable and _idle(w))
            live_vram = sum(
                counts.share(w)
                for w in on
                if usable
                and w.status() in (WorkerStatus.READY, WorkerStatus.BUSY)
                and not w.pending
            )
            if (idle, live_vram) != (gpu.idle, gpu.live):
                problems.append(
                    f"gpu {rec.pool_id}/{gpu.gpu_id}: idle/live {gpu.idle}/{gpu.live}"
                    f" != {idle}/{live_vram}"
                )
    return problems
