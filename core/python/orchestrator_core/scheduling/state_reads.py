"""ClusterReads: every question the daemon, tools and snapshots ask the cluster state.

:class:`~orchestrator_core.scheduling.state.ClusterState` applies events; this base class
answers from the same parts without changing anything: the queue (positions, counts,
tenants), running jobs (by worker, by pool), the pools as last given, the fleet as frozen
views, and the models. Every answer is O(log n) or O(1) unless its docstring says
otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator_core.jobs import Priority
from orchestrator_core.pools import PoolInfo
from orchestrator_core.scheduling.catalog import ModelInfo
from orchestrator_core.scheduling.demand_index import DemandIndex
from orchestrator_core.scheduling.fleet_index import FleetIndex
from orchestrator_core.scheduling.fleet_views import (
    could_ever_fit,
    fleet_problems,
    free_worker_views,
    gpu_view,
    pool_can_load,
    pool_model_name,
    pool_view,
    pools_by_status,
    status_counts,
    worker_view,
)
from orchestrator_core.scheduling.model_index import ModelIndex
from orchestrator_core.scheduling.queue_index import QueueIndex
from orchestrator_core.scheduling.running import RunningJobs
from orchestrator_core.scheduling.views import (
    GpuView,
    PoolView,
    QueuedJob,
    TenantView,
    WorkerView,
)

__all__ = ["ClusterReads"]


class ClusterReads:
    """The read side of :class:`~orchestrator_core.scheduling.state.ClusterState`."""

    _queue: QueueIndex
    _demand: DemandIndex
    _running: RunningJobs
    _fleet: FleetIndex
    _models: ModelIndex
    _pool_infos: dict[str, PoolInfo]
    _sent_at: dict[str, float]

    # -- reads: queue ------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of queued jobs."""
        return len(self._queue)

    def __contains__(self, job_id: object) -> bool:
        """Whether ``job_id`` is queued."""
        return job_id in self._queue

    def get_job(self, job_id: str) -> QueuedJob | None:
        """The queued job with this id, or ``None``."""
        return self._queue.get(job_id)

    def position(self, job_id: str) -> int:
        """Queued jobs ahead of ``job_id`` in the queue order (0 = next); O(log n)."""
        return self._queue.position(job_id)

    def ordered_jobs(self, limit: int | None = None, *, cls: int | None = None) -> list[QueuedJob]:
        """The first ``limit`` queued jobs in queue order (of one class if ``cls`` is given)."""
        return self._queue.ordered(limit, cls=cls)

    def mean_queued_at(self) -> float:
        """Mean ``queued_at`` of the queued jobs (0 when empty); O(1)."""
        return self._queue.mean_queued_at()

    def queued_count(self, priority: Priority | None = None) -> int:
        """Queued jobs in total, or of one submitted priority."""
        return self._queue.count(priority)

    def class_count(self, cls: int) -> int:
        """Queued jobs in order class ``cls`` (0 includes promoted batch jobs)."""
        return self._queue.class_count(cls)

    def tenant_view(self, tenant_id: str) -> TenantView:
        """Weight, quotas and usage of a tenant (unknown tenants: defaults, no usage)."""
        return self._demand.tenant_view(tenant_id)

    def tenant_ids(self) -> list[str]:
        """Configured tenants and tenants with queued or running jobs, sorted."""
        return self._demand.tenant_ids()

    def tenant_queued(self, tenant_id: str) -> int:
        """Queued jobs of a tenant (``""``: jobs without a tenant); O(1)."""
        return self._demand.tenant_queued(tenant_id)

    def oldest_unpromoted_batch(self, now: float | None = None) -> QueuedJob | None:
        """The batch job queued earliest that is not promoted (with ``now``: nor due for
        promotion at ``now``) — what ``drop-oldest-batch`` drops — or ``None``."""
        return self._queue.oldest_unpromoted_batch(now)

    def position_of_new(
        self, priority: Priority, queued_at: float, *, dropping: QueuedJob | None = None
    ) -> int:
        """Where a new job would stand once added, ``dropping`` taken out first (see
        :meth:`QueueIndex.position_of_new
        <orchestrator_core.scheduling.queue_index.QueueIndex.position_of_new>`)."""
        return self._queue.position_of_new(priority, queued_at, dropping=dropping)

    # -- reads: running jobs -------------------------------------------------------------------

    def is_running(self, job_id: str) -> bool:
        """Whether ``job_id`` was dispatched and has not finished."""
        return job_id in self._running

    def running_worker(self, job_id: str) -> str | None:
        """The worker a running job was dispatched to, or ``None``."""
        run = self._running.get(job_id)
        return None if run is None else run.worker_id

    def jobs_on_worker(self, worker_id: str) -> list[str]:
        """Ids of the jobs the state knows run on ``worker_id``, sorted."""
        return sorted(self._running.on_worker(worker_id))

    def jobs_on_pool(self, pool_id: str) -> list[str]:
        """Ids of the jobs the state knows run on the workers ``pool_id`` has now, sorted
        (a worker the pool no longer reports has left it, with its jobs)."""
        rec = self._fleet.pools.get(pool_id)
        if rec is None:
            return []
        return sorted(j for w in rec.workers for j in self._running.on_worker(w))

    def worker_load(self, worker_id: str) -> int:
        """Active jobs of a worker: the jobs the state knows run there plus what its last
        report showed beyond them (0 for an unknown worker)."""
        worker = self._fleet.workers.get(worker_id)
        return 0 if worker is None else worker.active()

    # -- reads: pools as given -------------------------------------------------------------

    def pool_info(self, pool_id: str) -> PoolInfo | None:
        """The last :class:`PoolInfo` given for the pool, with ``status`` the one the state
        holds now (e.g. after :meth:`set_pool_status`); ``None`` if unknown."""
        info = self._pool_infos.get(pool_id)
        rec = self._fleet.pools.get(pool_id)
        if info is None or rec is None:
            return None
        if info.status is rec.status:
            return info
        return info.model_copy(update={"status": rec.status})

    def pool_infos(self) -> list[PoolInfo]:
        """:meth:`pool_info` of every pool, sorted by pool id."""
        out = [self.pool_info(p) for p in sorted(self._pool_infos)]
        return [p for p in out if p is not None]

    def pool_sent_at(self, pool_id: str) -> float | None:
        """The pool's own timestamp on its last heartbeat (``None``: none since it
        registered, or unknown)."""
        return self._sent_at.get(pool_id)

    # -- reads: fleet and models -----------------------------------------------------------

    def worker_view(self, worker_id: str) -> WorkerView | None:
        """One worker, or ``None``."""
        return worker_view(self._fleet, worker_id)

    def gpu_view(self, pool_id: str, gpu_id: str) -> GpuView | None:
        """One GPU, or ``None``."""
        return gpu_view(self._fleet, pool_id, gpu_id)

    def pool_view(self, pool_id: str) -> PoolView | None:
        """One pool, or ``None``."""
        return pool_view(self._fleet, pool_id)

    def pool_model_name(self, pool_id: str, model_ref: str) -> str:
        """The name ``pool_id`` itself uses for the canonical ``model_ref``: the model it
        reported that resolves to ``model_ref`` (an alias of the catalog, say), else
        ``model_ref``. A worker start must name the model the way the pool knows it."""
        return pool_model_name(self._fleet, pool_id, model_ref)

    def pool_ids(self) -> list[str]:
        """Every pool id, sorted."""
        return sorted(self._fleet.pools)

    def worker_ids(self, model_ref: str | None = None) -> list[str]:
        """Every worker id (of one model if given), sorted. O(W): for tools, not decisions."""
        ref = None if model_ref is None else self._models.resolve(model_ref)
        workers = self._fleet.workers
        return sorted(w for w, r in workers.items() if ref is None or r.model_ref == ref)

    def free_workers(self, model_ref: str, limit: int = 10) -> list[WorkerView]:
        """Workers of a model with a free slot, best first by the placement (online pools,
        then degraded ones)."""
        return free_worker_views(self._fleet, self._models.resolve(model_ref), limit)

    def pool_can_load(self, pool_id: str, model_ref: str) -> bool:
        """Whether a pool can start workers of this model (it lists it, or lists nothing)."""
        return pool_can_load(self._fleet, pool_id, model_ref)

    def live_slots(self, model_ref: str) -> int:
        """Slots of ready, busy and starting workers of a model on pools that are not
        offline (starting workers count: they are capacity on its way)."""
        return self._fleet.counts.live[self._models.resolve(model_ref)]

    def status_counts(self) -> dict[str, int]:
        """Workers by effective status."""
        return status_counts(self._fleet)

    def pools_by_status(self) -> dict[str, int]:
        """Pools by status. O(pools)."""
        return pools_by_status(self._fleet)

    def could_ever_fit(self, model_ref: str) -> bool | None:
        """Whether some registered pool (in any status) could host a worker of this model:
        it can load the model and has a GPU with enough total VRAM. ``None`` when no pool
        with GPUs is registered at all (nothing can be concluded yet)."""
        return could_ever_fit(self._fleet, model_ref)

    def resolve_model(self, name: str) -> str:
        """Canonical model ref of a ref or alias."""
        return self._models.resolve(name)

    def model_vram(self, model_ref: str) -> int:
        """VRAM a worker of this model needs: the catalog's figure, else the most a pool or
        worker reported, else 0 (unknown)."""
        return self._models.vram(model_ref)

    def model_known(self, model_ref: str) -> bool:
        """Whether the catalog, a pool or a worker knows this model."""
        return self._models.known(model_ref)

    def model_info(self, model_ref: str) -> ModelInfo | None:
        """Catalog entry (with learned VRAM if the catalog had none), or ``None`` if unknown."""
        return self._models.info(model_ref)

    def known_models(self) -> list[str]:
        """Every model the catalog, the pools or the workers know, sorted."""
        return self._models.names()

    def self_check(self) -> Sequence[str]:
        """Recompute the main counters from the records and list every difference (empty
        when consistent). O(everything): for tests and debugging, never in a decision."""
        problems: list[Any] = fleet_problems(self._fleet)
        problems.extend(self._demand.self_check())
        return problems
