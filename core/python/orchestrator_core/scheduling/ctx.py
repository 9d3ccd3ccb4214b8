"""The Rhai ``ctx`` map of a snapshot (docs/design/rhai-policies.md).

Built from the state's parts (the ones a snapshot reads, through their public methods):
the queue windowed to the first ``window`` jobs of each order class (with counts in
``queue_info``), pools with GPUs and workers, the catalog, tenants, metrics, a config
summary and ``now`` — times in Unix milliseconds. Each pool's map is cached per pool
revision, so a policy call pays only for the pools that changed since the last one.
"""

from __future__ import annotations

from typing import Any

from orchestrator_core.config import OrchestratorConfig
from orchestrator_core.jobs import Priority
from orchestrator_core.scheduling.fleet_views import (
    gpu_view,
    pool_view,
    pools_by_status,
    status_counts,
    worker_view,
)
from orchestrator_core.scheduling.parts import StateParts
from orchestrator_core.scheduling.views import QueuedJob

__all__ = ["build_ctx"]

_DEFAULT_CONFIG = OrchestratorConfig()


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def build_ctx(
    parts: StateParts, now: float, window: int | None, config: OrchestratorConfig | None
) -> dict[str, Any]:
    """The ctx map of the state's ``parts`` at ``now`` (see
    :meth:`~orchestrator_core.scheduling.snapshot.SchedulingSnapshot.to_ctx`)."""
    if config is None:
        config = _DEFAULT_CONFIG
    queue, fleet, models = parts.queue, parts.fleet, parts.fleet.models
    if window is None:
        window = config.scheduler.snapshot_window
    if window < 0:
        raise ValueError(f"window: must be >= 0, got {window}")
    now_ms = _ms(now) or 0
    jobs: list[dict[str, Any]] = []
    for cls in (0, 1):
        for qj in queue.ordered(window, cls=cls):
            jobs.append(_job_map(parts, now, qj, len(jobs)))
    interactive = queue.count(Priority.INTERACTIVE)
    batch = queue.count(Priority.BATCH)
    total = queue.count()
    pools: list[dict[str, Any]] = []
    vram_total = vram_free = 0
    for pool_id in sorted(fleet.pools):
        pmap = _pool_map(parts, pool_id)
        age = max(0, now_ms - (pmap["last_heartbeat_ms"] or 0))
        pools.append({**pmap, "heartbeat_age_ms": age})
        if pmap["status"] != "offline":
            vram_total += pmap["vram_total_bytes"]
            vram_free += pmap["vram_free_bytes"]
    catalog: dict[str, Any] = {"models": {}, "aliases": models.catalog.aliases()}
    for ref in models.names():
        info = models.info(ref)
        if info is not None:
            catalog["models"][ref] = info.to_ctx()
    avg_wait = 0 if total == 0 else max(0, round(1000 * (now - queue.mean_queued_at())))
    return {
        "now": now_ms,
        "queue": jobs,
        "queue_info": {
            "window": window,
            "total": total,
            "interactive": interactive,
            "batch": batch,
            "class0": queue.class_count(0),
            "class1": queue.class_count(1),
            "shown": len(jobs),
            "truncated": len(jobs) < total,
            "ordering": queue.order.name,
        },
        "pools": pools,
        "catalog": catalog,
        "tenants": _tenants(parts),
        "metrics": {
            "queue_depth": {"interactive": interactive, "batch": batch},
            "queue_total": total,
            "workers_by_status": status_counts(fleet),
            "pools_by_status": pools_by_status(fleet),
            "vram_total_bytes": vram_total,
            "vram_free_bytes": vram_free,
            "avg_wait_ms": avg_wait,
        },
        "config": _config_summary(parts, config),
    }


def _tenants(parts: StateParts) -> dict[str, Any]:
    tenants = {}
    demand = parts.demand
    enforce = demand.enforce_quotas
    for tid in demand.tenant_ids():
        t = demand.tenant_view(tid)
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


def _job_map(parts: StateParts, now: float, qj: QueuedJob, position: int) -> dict[str, Any]:
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
        "wait_time_ms": max(0, round(1000 * (now - qj.queued_at))),
        "retry_count": job.attempts,
        "estimated_vram_bytes": parts.fleet.models.vram(qj.model_ref),
    }


def _pool_map(parts: StateParts, pool_id: str) -> dict[str, Any]:
    """The ctx map of one pool without its heartbeat age, cached per pool revision."""
    fleet, cache = parts.fleet, parts.ctx_cache
    revision = fleet.pools[pool_id].version
    cached = cache.get(pool_id)
    if cached is not None and cached[0] == revision:
        return cached[1]
    pool = pool_view(fleet, pool_id)
    assert pool is not None
    gpus = []
    total = free = 0
    for gid in sorted(pool.gpu_ids):
        g = gpu_view(fleet, pool_id, gid)
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
        w = worker_view(fleet, wid)
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


def _config_summary(parts: StateParts, c: OrchestratorConfig) -> dict[str, Any]:
    demand = parts.demand
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
            "placement": parts.fleet.counts.placement.name,
            "ordering": parts.queue.order.name,
            "quota_action": demand.quota_action,
            "enforce_quotas": demand.enforce_quotas,
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
