"""SchedulingSnapshot: the read-only view one scheduling decision reads.

A snapshot is a thin view over :class:`~orchestrator_core.scheduling.state.ClusterState`
at a given ``now``: making one copies nothing. It is valid until the state changes; any
read after that raises :class:`SnapshotStale` (decide, then apply, then take a new one).

For a Rhai policy, :meth:`SchedulingSnapshot.to_ctx` builds the ``ctx`` map of
RHAI_RUNTIME.md: the queue windowed to the first ``window`` jobs of each order class (with
counts in ``queue_info``), pools with GPUs and workers, the catalog, tenants, metrics, a
config summary and ``now`` — times in Unix milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator_core.errors import ErrorCode, OrchestratorError
from orchestrator_core.jobs import Priority
from orchestrator_core.pools import PoolStatus
from orchestrator_core.scheduling.catalog import ModelInfo
from orchestrator_core.scheduling.views import (
    GpuView,
    PoolView,
    QueuedJob,
    TenantView,
    WorkerView,
)

if TYPE_CHECKING:
    from orchestrator_core.scheduling.state import ClusterState, _Pool

__all__ = ["SchedulingSnapshot", "SnapshotStale"]


class SnapshotStale(OrchestratorError):
    """The cluster state changed after this snapshot was taken; take a new one."""

    code = ErrorCode.SCHEDULER_ERROR

    def __init__(self) -> None:
        super().__init__("the cluster state changed after this snapshot was taken")


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class SchedulingSnapshot:
    """A read-only view of the cluster at ``now`` (Unix seconds). Cheap to make."""

    __slots__ = ("_state", "now", "version")

    def __init__(self, state: ClusterState, now: float) -> None:
        self._state = state
        self.now = now
        self.version = state.version

    @property
    def stale(self) -> bool:
        """True once the state changed after the snapshot was taken."""
        return self._state.version != self.version

    def _fresh(self) -> ClusterState:
        if self._state.version != self.version:
            raise SnapshotStale()
        return self._state

    # -- what the state is indexed by --------------------------------------------------------

    @property
    def order_name(self) -> str:
        """Name of the queue order the jobs are sorted by."""
        return self._fresh().order.name

    @property
    def placement_name(self) -> str:
        """Name of the placement the free workers are sorted by."""
        return self._fresh().placement.name

    @property
    def enforce_quotas(self) -> bool:
        """Whether tenants' ``max_running`` quotas apply."""
        return self._fresh().enforce_quotas

    @property
    def quota_action(self) -> str:
        """``wait`` or ``reject`` for a tenant at its quota."""
        return self._fresh().quota_action

    # -- jobs ---------------------------------------------------------------------------------

    def job(self, job_id: str) -> QueuedJob | None:
        """The queued job with this id, or ``None`` (also for running jobs)."""
        return self._fresh().get_job(job_id)

    def is_running(self, job_id: str) -> bool:
        """Whether the job was dispatched and has not finished."""
        return self._fresh().is_running(job_id)

    def jobs(self, limit: int | None = None, *, cls: int | None = None) -> list[QueuedJob]:
        """The first ``limit`` queued jobs in queue order (of one order class if given)."""
        return self._fresh().ordered_jobs(limit, cls=cls)

    def queued_count(self, priority: Priority | None = None) -> int:
        """Queued jobs, in total or of one submitted priority."""
        return self._fresh().queued_count(priority)

    def position(self, job_id: str) -> int:
        """Jobs ahead of ``job_id`` in queue order."""
        return self._fresh().position(job_id)

    # -- fleet --------------------------------------------------------------------------------

    def worker(self, worker_id: str) -> WorkerView | None:
        """One worker (effective status), or ``None``."""
        return self._fresh().worker_view(worker_id)

    def pool(self, pool_id: str) -> PoolView | None:
        """One pool, or ``None``."""
        return self._fresh().pool_view(pool_id)

    def gpu(self, pool_id: str, gpu_id: str) -> GpuView | None:
        """One GPU of a pool, or ``None``."""
        return self._fresh().gpu_view(pool_id, gpu_id)

    def free_workers(self, model_ref: str, limit: int = 10) -> list[WorkerView]:
        """Workers of a model with a free slot, best first for the placement."""
        return self._fresh().free_workers(model_ref, limit)

    def live_slots(self, model_ref: str) -> int:
        """Slots of ready, busy and starting workers of a model (pools not offline)."""
        return self._fresh().live_slots(model_ref)

    def pool_can_load(self, pool_id: str, model_ref: str) -> bool:
        """Whether a pool can start workers of a model."""
        return self._fresh().pool_can_load(pool_id, model_ref)

    # -- catalog and tenants --------------------------------------------------------------------

    def resolve_model(self, name: str) -> str:
        """Canonical ref of a model ref or alias."""
        return self._fresh().resolve_model(name)

    def model(self, name: str) -> ModelInfo | None:
        """The model (ref or alias) with its VRAM need, or ``None`` if nothing knows it."""
        return self._fresh().model_info(name)

    def model_vram(self, name: str) -> int:
        """VRAM a worker of the model needs (0 = unknown)."""
        return self._fresh().model_vram(name)

    def tenant(self, tenant_id: str) -> TenantView:
        """A tenant's weight, quotas and usage."""
        return self._fresh().tenant_view(tenant_id)

    # -- Rhai ctx -------------------------------------------------------------------------------

    def to_ctx(self, window: int | None = None) -> dict[str, Any]:
        """The Rhai ``ctx`` map (RHAI_RUNTIME.md). Times are Unix milliseconds.

        ``queue`` holds at most ``window`` jobs of each order class (class 0: interactive and
        promoted batch; class 1: batch), in queue order; ``queue_info`` says how many there
        are and whether the window cut some. ``window`` defaults to
        ``config.scheduler.snapshot_window`` (256). Building it costs O(window + pools +
        GPUs + workers); each pool's map is cached until that pool changes, so the returned
        structure shares sub-maps between calls: treat it as read-only.
        """
        state = self._fresh()
        config = _config_of(state)
        if window is None:
            window = config.scheduler.snapshot_window
        if window < 0:
            raise ValueError(f"window: must be >= 0, got {window}")
        now_ms = _ms(self.now) or 0
        queue: list[dict[str, Any]] = []
        for cls in (0, 1):
            for qj in state.ordered_jobs(window, cls=cls):
                queue.append(self._job_map(qj, len(queue)))
        class0, class1 = state.class_count(0), state.class_count(1)
        interactive = state.queued_count(Priority.INTERACTIVE)
        batch = state.queued_count(Priority.BATCH)
        total = len(state)
        pools: list[dict[str, Any]] = []
        vram_total = vram_free = 0
        for rec in sorted(state.iter_pools(), key=lambda p: p.pool_id):
            pmap = state_pool_map(state, rec)
            pools.append(
                {**pmap, "heartbeat_age_ms": max(0, now_ms - (_ms(rec.last_heartbeat) or 0))}
            )
            if rec.status is not PoolStatus.OFFLINE:
                vram_total += pmap["vram_total_bytes"]
                vram_free += pmap["vram_free_bytes"]
        catalog: dict[str, Any] = {"models": {}, "aliases": state.catalog.aliases()}
        for ref in state.known_models():
            info = state.model_info(ref)
            if info is not None:
                catalog["models"][ref] = info.to_ctx()
        tenants = {}
        for tid in state.tenant_ids():
            t = state.tenant_view(tid)
            tenants[tid] = {
                "tenant_id": tid,
                "weight": t.weight,
                "max_queued": t.max_queued,
                "max_running": t.max_running,
                "queued": t.queued,
                "running": t.running,
                "at_quota": state.enforce_quotas and t.at_running_quota,
            }
        avg_wait = 0 if total == 0 else max(0, round(1000 * (self.now - state.mean_queued_at())))
        return {
            "now": now_ms,
            "queue": queue,
            "queue_info": {
                "window": window,
                "total": total,
                "interactive": interactive,
                "batch": batch,
                "class0": class0,
                "class1": class1,
                "shown": len(queue),
                "truncated": len(queue) < total,
                "ordering": state.order.name,
            },
            "pools": pools,
            "catalog": catalog,
            "tenants": tenants,
            "metrics": {
                "queue_depth": {"interactive": interactive, "batch": batch},
                "queue_total": total,
                "workers_by_status": state.status_counts(),
                "pools_by_status": state.pools_by_status(),
                "vram_total_bytes": vram_total,
                "vram_free_bytes": vram_free,
                "avg_wait_ms": avg_wait,
            },
            "config": _config_summary(state),
        }

    def _job_map(self, qj: QueuedJob, position: int) -> dict[str, Any]:
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
            "wait_time_ms": max(0, round(1000 * (self.now - qj.queued_at))),
            "retry_count": job.attempts,
            "estimated_vram_bytes": self._state.model_vram(qj.model_ref),
        }


def state_pool_map(state: ClusterState, rec: _Pool) -> dict[str, Any]:
    """The ctx map of one pool without its heartbeat age, cached per pool version."""
    cached = state._ctx_cache.get(rec.pool_id)
    if cached is not None and cached[0] == rec.version:
        return cached[1]
    gpus = []
    total = free = 0
    for gid in sorted(rec.gpus):
        g = state.gpu_view(rec.pool_id, gid)
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
    for wid in sorted(rec.workers):
        w = state.worker_view(wid)
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
        "id": rec.pool_id,
        "endpoint": rec.endpoint,
        "status": str(rec.status),
        "capabilities": list(rec.capabilities),
        "last_heartbeat_ms": _ms(rec.last_heartbeat),
        "gpus": gpus,
        "workers": workers,
        "cached_models": sorted(rec.models),
        "vram_total_bytes": total,
        "vram_free_bytes": free,
    }
    state._ctx_cache[rec.pool_id] = (rec.version, pmap)
    return pmap


def _config_of(state: ClusterState) -> Any:
    if state.config is not None:
        return state.config
    from orchestrator_core.config import OrchestratorConfig

    return OrchestratorConfig()


def _config_summary(state: ClusterState) -> dict[str, Any]:
    c = _config_of(state)
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
            "placement": state.placement.name,
            "ordering": state.order.name,
            "quota_action": state.quota_action,
            "enforce_quotas": state.enforce_quotas,
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
