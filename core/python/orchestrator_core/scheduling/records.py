"""The fleet's records: one per worker, GPU, pool and group of interchangeable GPUs.

The fleet index (:mod:`~orchestrator_core.scheduling.fleet_index`) owns and changes them;
the snapshot hands them to planners, which only read them (building a frozen view per
candidate would cost more than the decision). Each record holds what pools reported, what
the orchestrator did since, and — in its ``c_*`` fields — what the indexes currently count
for it, so that a change re-counts only the difference.
"""

from __future__ import annotations

from typing import Any

from sortedcontainers import SortedList

from orchestrator_core.pools import PoolStatus, WorkerStatus
from orchestrator_core.scheduling.views import placeable_vram

__all__ = ["GpuGroup", "GpuRecord", "PoolRecord", "WorkerRecord"]


class WorkerRecord:
    """A worker: the pool's last report plus what the orchestrator did since.

    Read by planners: ``worker_id``, ``pool_id``, ``model_ref``, ``gpu_ids``,
    ``max_concurrency``, ``last_used_at``, ``jobs_completed``, ``pending`` (a start no
    heartbeat confirmed yet), ``stopping`` (asked to stop), :meth:`active`, :meth:`status`;
    ``c_idle`` (counted as idle and evictable) and ``c_drain`` (counted as ready or busy,
    what draining could free).
    """

    __slots__ = (
        "c_alloc",
        "c_drain",
        "c_idle",
        "c_live",
        "c_model",
        "c_share",
        "c_slot",
        "c_status",
        "current_job_id",
        "gpu_ids",
        "jobs_completed",
        "last_dispatch",
        "last_used_at",
        "max_concurrency",
        "model_ref",
        "own_active",
        "pending",
        "pool_id",
        "reported_status",
        "requested_at",
        "stopping",
        "unknown_active",
        "uri",
        "vram_bytes",
        "worker_id",
    )

    def __init__(self, worker_id: str, pool_id: str, model_ref: str) -> None:
        self.worker_id = worker_id
        self.pool_id = pool_id
        self.model_ref = model_ref
        self.gpu_ids: tuple[str, ...] = ()
        self.reported_status = WorkerStatus.STARTING
        self.unknown_active = 0
        self.own_active = 0
        self.max_concurrency = 1
        self.vram_bytes = 0
        self.uri = ""
        self.current_job_id: str | None = None
        self.last_used_at: float | None = None
        self.jobs_completed = 0
        self.last_dispatch = 0
        self.pending = False
        self.stopping = False
        self.requested_at: float | None = None
        # contributions currently counted in the fleet's indexes and sums
        self.c_live = 0
        self.c_status: WorkerStatus | None = None
        self.c_idle = False
        self.c_drain = False
        self.c_alloc = False
        self.c_share = 0
        self.c_slot: int | None = None
        self.c_model = model_ref

    def active(self) -> int:
        """Active jobs: the jobs the orchestrator knows run here (kept exact by dispatch and
        finish events), plus those the last report showed beyond them (jobs it does not
        know, or a report that has not seen a finish yet: busy until the next report)."""
        return self.own_active + self.unknown_active

    def take_reported_load(
        self, status: WorkerStatus, active_jobs: int, *, finished_shown: bool = False
    ) -> None:
        """Record a report's load: whatever it shows beyond the known jobs is unknown load.
        ``finished_shown``: the report still shows a job that has finished since (it was sent
        before the end was known), so that job does not count."""
        reported = self.max_concurrency if status is WorkerStatus.BUSY else active_jobs
        if finished_shown and reported > 0:
            reported -= 1
        self.unknown_active = max(0, reported - self.own_active)

    def status(self) -> WorkerStatus:
        """Effective status: draining once asked to stop; ready or busy by the active jobs
        against the slots when the pool reports it ready or busy; else what it reports."""
        if self.stopping:
            return WorkerStatus.DRAINING
        reported = self.reported_status
        if reported is WorkerStatus.READY or reported is WorkerStatus.BUSY:
            return WorkerStatus.READY if self.active() < self.max_concurrency else WorkerStatus.BUSY
        return reported


class GpuRecord:
    """A GPU of a pool. Read by planners: ``pool_id``, ``gpu_id``, ``workers`` (ids of the
    workers on it), :meth:`free`, :meth:`free_after`."""

    __slots__ = (
        "allocated",
        "c_drainable",
        "c_free",
        "c_group",
        "c_reclaim",
        "gpu_id",
        "idle",
        "live",
        "name",
        "pool_id",
        "released",
        "reported_free",
        "total",
        "utilization",
        "workers",
    )

    def __init__(self, pool_id: str, gpu_id: str) -> None:
        self.pool_id = pool_id
        self.gpu_id = gpu_id
        self.name = "gpu"
        self.total = 0
        self.reported_free = 0
        self.utilization = 0.0
        self.released = 0  # VRAM of workers asked to stop since the last report
        self.allocated = 0  # VRAM of workers on it (started or not, not stopping)
        self.idle = 0  # VRAM of idle, evictable workers on it
        self.live = 0  # VRAM of ready or busy workers on it (what draining could free)
        self.workers: set[str] = set()
        self.c_group: GpuGroup | None = None
        self.c_free = 0
        self.c_reclaim = 0
        self.c_drainable = 0

    def free(self) -> int:
        """VRAM the scheduler may still place here."""
        return max(0, min(self.reported_free + self.released, self.total - self.allocated))

    def free_after(self, freed: int = 0, reserved: int = 0) -> int:
        """VRAM a start may use here once workers holding ``freed`` bytes of this GPU stop
        and starts take ``reserved`` bytes of it (:func:`placeable_vram`, the validator's
        rule)."""
        return placeable_vram(
            self.free(), self.total, self.allocated, freed=freed, reserved=reserved
        )


class GpuGroup:
    """GPUs of pools with one status and one set of loadable models (empty = any model),
    sorted three ways: by free VRAM (``free_idx``), by VRAM free once idle workers are
    evicted (``reclaim_idx``) and once ready or busy workers stop (``drain_idx``); entries
    ``(bytes, pool_id, gpu_id)``. ``totals``: the GPUs' sizes, ascending."""

    __slots__ = ("drain_idx", "free_idx", "key", "models", "reclaim_idx", "status", "totals")

    def __init__(self, status: PoolStatus, models: frozenset[str]) -> None:
        self.status = status
        self.models = models
        self.key = (status, models)
        self.free_idx: Any = SortedList()
        self.reclaim_idx: Any = SortedList()
        self.drain_idx: Any = SortedList()
        self.totals: Any = SortedList()

    def can_load(self, model_ref: str) -> bool:
        """Whether the group's pools can load ``model_ref``."""
        return not self.models or model_ref in self.models


class PoolRecord:
    """A pool as the fleet keeps it: what it reported, its GPUs and the ids of its workers.
    ``version`` changes with anything that changes the pool's Rhai ctx map."""

    __slots__ = (
        "capabilities",
        "endpoint",
        "gpus",
        "last_heartbeat",
        "models",
        "pool_id",
        "registered_at",
        "reported_models",
        "status",
        "version",
        "workers",
    )

    def __init__(self, pool_id: str) -> None:
        self.pool_id = pool_id
        self.endpoint = ""
        self.status = PoolStatus.ONLINE
        self.capabilities: tuple[str, ...] = ()
        self.models: frozenset[str] = frozenset()
        self.reported_models: tuple[str, ...] = ()
        self.registered_at = 0.0
        self.last_heartbeat = 0.0
        self.gpus: dict[str, GpuRecord] = {}
        self.workers: set[str] = set()
        self.version = 0

    def can_load(self, model_ref: str) -> bool:
        """Whether the pool can start workers of ``model_ref`` (it lists it, or nothing)."""
        return not self.models or model_ref in self.models
