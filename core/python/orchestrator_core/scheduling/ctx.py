"""The Rhai ``ctx`` map of a snapshot (docs/design/rhai-policies.md).

Built from the snapshot's public reads only: the queue windowed to the first ``window``
jobs of each order class (with counts in ``queue_info``), pools with GPUs and workers, the
catalog, tenants, metrics, a config summary and ``now`` — times in Unix milliseconds. Each
pool's map is cached per pool revision, so a policy call pays only for the pools that
changed since the last one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator_core.config import OrchestratorConfig
from orchestrator_core.jobs import Priority
from orchestrator_core.scheduling.views import QueuedJob

if TYPE_CHECKING:
    from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

__all__ = ["CtxCache", "build_ctx"]

CtxCache = dict[str, tuple[int, dict[str, Any]]]
"""Pool id -> (pool revision, the pool's ctx map without its heartbeat age)."""

_DEFAULT_CONFIG = OrchestratorConfig()


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def build_ctx(snap: SchedulingSnapshot, window: int | None, cache: CtxCache) -> dict[str, Any]:
    """The ctx map of ``snap`` (see
    :meth:`~orchestrator_core.scheduling.snapshot.SchedulingSnapshot.to_ctx`)."""
    config = snap.config if snap.config is not None else _DEFAULT_CONFIG
    if window is None:
        window = config.scheduler.snapshot_window
    if window < 0:
        raise ValueError(f"window: must be >= 0, got {window}")
    now_ms = _ms(snap.now) or 0
    queue: list[dict[str, Any]] = []
    for cls in (0, 1):
        for qj in snap.jobs(window, cls=cls):
            queue.append(_job_map(snap, qj, len(queue)))
    interactive = snap.queued_count(Priority.INTERACTIVE)
    batch = snap.queued_count(Priority.BATCH)
    total = snap.queued_count()
    pools: list[dict[str, Any]] = []
    vram_total = vram_free = 0
    for pool_id in snap.pool_ids():
        pmap = _pool_map(snap, pool_id, cache)
        age = max(0, now_ms - (pmap["last_heartbeat_ms"] or 0))
        pools.append({**pmap, "heartbeat_age_ms": age})
        if pmap["status"] != "offline":
            vram_total += pmap["vram_total_bytes"]
            vram_free += pmap["vram_free_bytes"]
    catalog: dict[str, Any] = {"models": {}, "aliases": snap.model_aliases()}
    for ref in snap.model_names():
        info = snap.model(ref)
        if info is not None:
            catalog["models"][ref] = info.to_ctx()
    avg_wait = 0 if total == 0 else max(0, round(1000 * (snap.now - snap.mean_queued_at())))
    return {
        "now": now_ms,
        "queue": queue,
        "queue_info": {
            "window": window,
            "total": total,
            "interactive": interactive,
            "batch": batch,
            "class0": snap.class_count(0),
            "class1": snap.class_count(1),
            "shown": len(queue),
            "truncated": len(queue) < total,
            "ordering": snap.order_name,
        },
        "pools": pools,
        "catalog": catalog,
        "tenants": _tenants(snap),
        "metrics": {
            "queue_depth": {"interactive": interactive, "batch": batch},
            "queue_total": total,
            "workers_by_status": snap.workers_by_status(),
            "pools_by_status": snap.pools_by_status(),
            "vram_total_bytes": vram_total,
            "vram_free_bytes": vram_free,
            "avg_wait_ms": avg_wait,
        },
        "config": _config_summary(snap, config),
    }


def _tenants(snap: SchedulingSnapshot) -> dict[str, Any]:
    tenants = {}
    enforce = snap.enforce_quotas
    for tid in snap.tenant_ids():
        t = snap.tenant(tid)
        tenants[tid] = {
            "tenant_id": tid,
            "weight": t.weight,
            "max_queued": t.max_queued,
            "max_running": t.max_running,
            "queued": t.queued,
            "running": t.running,
            "at_quota": enforce and t.at_running_quota,
        }
    return tenants


def _job_map(snap: SchedulingSnapshot, qj: QueuedJob, position: int) -> dict[str, Any]:
    job = qj.job
    return {
        "id": qj.job_id,
        "tenant_id": qj.tenant_id,
        "session_id": qj.session_id,
        "priority": str(qj.priority),
        "promoted": qj.promoted,
        "position": position,
        "model_ref": qj.model_ref,
        "requested_model": job.model_ref,
        "prompt_hash": job.prompt_hash,
        "max_tokens": job.params.max_tokens,
        "seed": job.params.seed,
        "temperature": job.params.temperature,
        "created_at": _ms(qj.created_at),
        "queued_at": _ms(qj.queued_at),
        "wait_time_ms": max(0, round(1000 * (snap.now - qj.queued_at))),
        "retry_count": job.attempts,
        "estimated_vram_bytes": snap.model_vram(qj.model_ref),
    }


def _pool_map(snap: SchedulingSnapshot, pool_id: str, cache: CtxCache) -> dict[str, Any]:
    """The ctx map of one pool without its heartbeat age, cached per pool revision."""
    revision = snap.pool_revision(pool_id)
    cached = cache.get(pool_id)
    if cached is not None and cached[0] == revision:
        return cached[1]
    pool = snap.pool(pool_id)
    assert pool is not None
    assert revision is not None
    gpus = []
    total = free = 0
    for gid in sorted(pool.gpu_ids):
        g = snap.gpu(pool_id, gid)
        assert g is not None
        total += g.vram_total_bytes
        free += g.vram_free_bytes
        gpus.append(
            {
                "id": g.gpu_id,
                "name": g.name,
                "vram_total_bytes": g.vram_total_bytes,
                "vram_allocated_bytes": g.vram_allocated_bytes,
                "vram_free_bytes": g.vram_free_bytes,
                "utilization": g.utilization,
                "worker_ids": list(g.worker_ids),
            }
        )
    workers = []
    for wid in pool.worker_ids:
        w = snap.worker(wid)
        if w is None:
            continue
        workers.append(
            {
                "id": w.worker_id,
                "pool_id": w.pool_id,
                "status": str(w.status),
                "model_ref": w.model_ref,
                "gpu_ids": list(w.gpu_ids),
                "vram_bytes": w.vram_bytes,
                "uri": w.uri,
                "current_job_id": w.current_job_id,
                "last_used_ms": _ms(w.last_used_at),
                "jobs_completed": w.jobs_completed,
                "active_jobs": w.active_jobs,
                "max_concurrency": w.max_concurrency,
                "free_slots": w.free_slots,
                "pending": w.pending,
            }
        )
    pmap = {
        "id": pool.pool_id,
        "endpoint": pool.endpoint,
        "status": str(pool.status),
        "capabilities": list(pool.capabilities),
        "last_heartbeat_ms": _ms(pool.last_heartbeat),
        "gpus": gpus,
        "workers": workers,
        "cached_models": list(pool.models),
        "vram_total_bytes": total,
        "vram_free_bytes": free,
    }
    cache[pool_id] = (revision, pmap)
    return pmap


def _config_summary(snap: SchedulingSnapshot, c: OrchestratorConfig) -> dict[str, Any]:
    return {
        "mode": c.mode,
        "queue": {
            "capacity": c.queue.capacity,
            "full_policy": c.queue.full_policy,
            "promote_after_s": c.queue.promote_after_s,
            "fairness": c.queue.fairness,
        },
        "scheduler": {
            "policy": c.scheduler.policy,
            "placement": snap.placement_name,
            "ordering": snap.order_name,
            "quota_action": snap.quota_action,
            "enforce_quotas": snap.enforce_quotas,
            "snapshot_window": c.scheduler.snapshot_window,
        },
        "timeout": {"default_s": c.timeout.default_s, "max_s": c.timeout.max_s},
        "retry": {
            "max_attempts": c.retry.max_attempts,
            "base_delay_s": c.retry.base_delay_s,
            "max_delay_s": c.retry.max_delay_s,
        },
        "eviction": {"policy": c.eviction.policy, "min_idle_s": c.eviction.min_idle_s},
    }
