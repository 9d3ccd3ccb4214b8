"""ClusterState: the daemon's mutable, indexed picture of the queue and the fleet.

The daemon owns one :class:`ClusterState` and tells it about every event — a job queued,
cancelled, dispatched or finished, a pool registered or heartbeating, a worker changing
state, a decision applied. Each event updates a handful of indexes in O(log n); a scheduler
then reads :meth:`ClusterState.snapshot`, a read-only view over those indexes that costs
nothing to make. No scheduling decision scans the queue or the fleet.

This class is a facade: it checks each event and hands it to the parts that keep one
concern each —

* :class:`~orchestrator_core.scheduling.queue_index.QueueIndex`: queued jobs in queue
  order, positions, promotion of aged batch jobs;
* :class:`~orchestrator_core.scheduling.demand_index.DemandIndex`: the same jobs by model
  and tenant, tenants' usage and quotas, and the models with demand (dispatchable, cold,
  scaling);
* :class:`~orchestrator_core.scheduling.running.RunningJobs`: jobs running and where;
* :class:`~orchestrator_core.scheduling.fleet_index.FleetIndex`: pools, GPUs and workers,
  with their counts and the free-worker index
  (:class:`~orchestrator_core.scheduling.fleet_counts.FleetCounts`);
* :class:`~orchestrator_core.scheduling.model_index.ModelIndex`: the catalog, models pools
  and workers know, learned VRAM.

It also keeps the last :class:`~orchestrator_core.pools.PoolInfo` of each pool as given
(:meth:`ClusterState.pool_info`), so the daemon needs no registry besides it. The questions
(positions, views, counts) are answered by its base class,
:class:`~orchestrator_core.scheduling.state_reads.ClusterReads`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from orchestrator_core.errors import ErrorCode, JobNotFound, OrchestratorError, PoolNotFound
from orchestrator_core.jobs import Job, JobStatus
from orchestrator_core.pools import PoolInfo, PoolStatus, WorkerStatus
from orchestrator_core.scheduling.catalog import ModelCatalog
from orchestrator_core.scheduling.decisions import (
    Decision,
    Dispatch,
    EvictWorker,
    Reject,
    StartWorker,
    iter_actions,
)
from orchestrator_core.scheduling.demand_index import DemandIndex, QuotaAction, TenantQuota
from orchestrator_core.scheduling.fleet_index import PENDING_PREFIX, FleetIndex
from orchestrator_core.scheduling.model_index import ModelIndex
from orchestrator_core.scheduling.ordering import PriorityOrder, QueueOrder
from orchestrator_core.scheduling.parts import Generation, StateParts
from orchestrator_core.scheduling.placement import LeastLoadedPlacement, Placement
from orchestrator_core.scheduling.plugins import build_placement, build_queue_order
from orchestrator_core.scheduling.queue_index import QueueIndex
from orchestrator_core.scheduling.records import PoolRecord, WorkerRecord
from orchestrator_core.scheduling.running import RunningJobs
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot
from orchestrator_core.scheduling.state_reads import ClusterReads
from orchestrator_core.scheduling.views import QueuedJob

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig

__all__ = ["PENDING_PREFIX", "ClusterState", "TenantQuota", "WorkerNotFound"]


class WorkerNotFound(OrchestratorError):
    """No worker with this id."""

    code = ErrorCode.WORKER_NOT_FOUND

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        super().__init__(f"worker {worker_id} not found", details={"worker_id": worker_id})


class ClusterState(ClusterReads):
    """The indexed cluster: queued jobs, running jobs, pools, GPUs, workers, tenants.

    Build it with :meth:`from_config` (queue order, placement, catalog, tenants and quotas
    from the configuration) and keep it for the daemon's lifetime. Every method is O(log n)
    in the queue and fleet sizes except the per-pool ones (:meth:`upsert_pool`,
    :meth:`set_pool_status`, :meth:`remove_pool`: O(workers and GPUs of that pool · log))
    and :meth:`reindex` (O(n log n), for a policy swap).

    Arguments:
        order: queue order (default: :class:`PriorityOrder`); the state keeps its own
            indexes in this order, so schedulers read it from the snapshot.
        placement: worker placement whose key sorts the free-worker index.
        catalog: models from the configuration (pools and workers add to it at run time).
        tenants: weights and quotas; unknown tenants get weight 1 and no quota.
        enforce_quotas: apply ``max_running`` (platform mode).
        quota_action: ``wait`` parks an over-quota tenant's jobs; ``reject`` lets the
            scheduler fail them with ``QUOTA_EXCEEDED``.
        max_promotions_per_snapshot: bound on batch jobs promoted by one :meth:`snapshot`
            (the rest are promoted by the next ones), so one call never does unbounded work.
        pending_start_ttl_s: a requested worker start that no heartbeat has confirmed after
            this long (by the pool's heartbeat clock) is forgotten.
        config: kept to summarise in the Rhai ``ctx.config``.
    """

    def __init__(
        self,
        *,
        order: QueueOrder | None = None,
        placement: Placement | None = None,
        catalog: ModelCatalog | None = None,
        tenants: Iterable[TenantQuota] = (),
        enforce_quotas: bool = False,
        quota_action: QuotaAction = "wait",
        max_promotions_per_snapshot: int = 256,
        pending_start_ttl_s: float = 600.0,
        config: OrchestratorConfig | None = None,
    ) -> None:
        if quota_action not in ("wait", "reject"):
            raise ValueError(f"quota_action: must be 'wait' or 'reject', got {quota_action!r}")
        if max_promotions_per_snapshot < 1:
            raise ValueError("max_promotions_per_snapshot: must be >= 1")
        self.max_promotions_per_snapshot = max_promotions_per_snapshot
        self.config = config
        self._version = 0
        self._generation: Generation | None = None  # read by the snapshots of this version
        self._models = ModelIndex(catalog if catalog is not None else ModelCatalog())
        self._running = RunningJobs()
        self._fleet = FleetIndex(
            self._models,
            placement if placement is not None else LeastLoadedPlacement(),
            self._running,
            pending_start_ttl_s=pending_start_ttl_s,
        )
        self._demand = DemandIndex(
            self._fleet.counts,
            tenants={t.tenant_id: t for t in tenants},
            enforce_quotas=enforce_quotas,
            quota_action=quota_action,
        )
        self._fleet.counts.watch(self._demand.refresh_model)
        self._queue = QueueIndex(order if order is not None else PriorityOrder(), self._demand)
        self._pool_infos: dict[str, PoolInfo] = {}
        self._sent_at: dict[str, float] = {}
        self._parts = StateParts(self._queue, self._demand, self._running, self._fleet, {})

    @classmethod
    def from_config(cls, config: OrchestratorConfig) -> ClusterState:
        """A state with the queue order, placement, catalog, tenants and quota settings of
        ``config`` (quotas are enforced in platform mode)."""
        return cls(
            order=build_queue_order(config),
            placement=build_placement(config),
            catalog=ModelCatalog.from_config(config),
            tenants=[
                TenantQuota(t.tenant_id, t.weight, t.max_queued, t.max_running)
                for t in config.tenants
            ],
            enforce_quotas=config.mode == "platform",
            quota_action=config.scheduler.quota_action,
            config=config,
        )

    # -- settings --------------------------------------------------------------------------

    @property
    def order(self) -> QueueOrder:
        """The queue order the job indexes are sorted by."""
        return self._queue.order

    @property
    def placement(self) -> Placement:
        """The placement the free-worker index is sorted by."""
        return self._fleet.counts.placement

    @property
    def catalog(self) -> ModelCatalog:
        """The configured model catalog."""
        return self._models.catalog

    @property
    def enforce_quotas(self) -> bool:
        """Whether tenants' ``max_running`` quotas apply (platform mode)."""
        return self._demand.enforce_quotas

    @property
    def quota_action(self) -> QuotaAction:
        """``wait`` (park) or ``reject`` for a tenant at its running quota."""
        return self._demand.quota_action

    @property
    def pending_start_ttl_s(self) -> float:
        """How long a requested start no heartbeat confirmed is kept."""
        return self._fleet.pending_start_ttl_s

    @pending_start_ttl_s.setter
    def pending_start_ttl_s(self, value: float) -> None:
        self._fleet.pending_start_ttl_s = value

    @property
    def version(self) -> int:
        """Increases with every change; a snapshot is valid while it is unchanged."""
        return self._version

    def snapshot(self, now: float) -> SchedulingSnapshot:
        """A read-only view at ``now`` (Unix seconds) for one scheduling decision.

        Promotes batch jobs that have waited long enough (at most
        ``max_promotions_per_snapshot`` per call), then returns a view that reads the live
        indexes: it is valid until the next change to the state.
        """
        if self._queue.promote_due(now, self.max_promotions_per_snapshot):
            self._changed()
        if self._generation is None:
            self._generation = Generation()
        return SchedulingSnapshot(
            self._parts, self._generation, now=now, version=self._version, config=self.config
        )

    def _changed(self) -> None:
        """Every change: a new version, and the snapshots of the old one go stale."""
        self._version += 1
        if self._generation is not None:
            self._generation.stale = True
            self._generation = None

    # -- jobs ------------------------------------------------------------------------------

    def add_job(self, job: Job) -> QueuedJob:
        """A queued job arrived (submitted, restored after a restart, or re-queued for a
        retry). Its model alias is resolved; its key comes from the queue order."""
        if job.status is not JobStatus.QUEUED:
            raise ValueError(f"job {job.job_id}: only queued jobs can be added ({job.status})")
        if job.job_id in self._queue or job.job_id in self._running:
            raise ValueError(f"job {job.job_id} is already known to the cluster state")
        qj = self._queue.add(job, self._models.resolve(job.model_ref))
        self._changed()
        return qj

    def remove_job(self, job_id: str) -> Job:
        """A queued job left without running (cancelled, expired, dropped, rejected)."""
        qj = self._queue.remove(job_id, served=False)
        self._changed()
        return qj.job

    def job_dispatched(self, job_id: str, worker_id: str, *, now: float) -> None:
        """A queued job was sent to ``worker_id``: it leaves the queue and occupies a slot
        of the worker until :meth:`job_finished`."""
        if job_id not in self._queue:
            raise JobNotFound(job_id)
        if worker_id not in self._fleet.workers:
            raise WorkerNotFound(worker_id)
        qj = self._queue.remove(job_id, served=True)
        self._start(qj.job, qj.tenant_key, qj.model_ref, worker_id, dispatched=True)

    def restore_running(self, job: Job, worker_id: str) -> None:
        """A job already running on ``worker_id`` (after a daemon restart): it counts against
        the worker's slots and the tenant's quota until :meth:`job_finished`."""
        if job.job_id in self._queue or job.job_id in self._running:
            raise ValueError(f"job {job.job_id} is already known to the cluster state")
        model_ref = self._models.resolve(job.model_ref)
        self._start(job, job.tenant_id or "", model_ref, worker_id, dispatched=False)

    def _start(
        self, job: Job, tenant: str, model_ref: str, worker_id: str, *, dispatched: bool
    ) -> None:
        self._running.start(job, tenant, model_ref, worker_id)
        self._demand.tenant_started(tenant)
        self._fleet.job_started(worker_id, job.job_id, dispatched=dispatched)
        self._changed()

    def job_finished(self, job_id: str, *, now: float) -> bool:
        """A running job ended (any outcome, or failed to dispatch): its worker slot and its
        tenant's quota are free again. Returns ``False`` if the job was not running."""
        run = self._running.finish(job_id)
        if run is None:
            return False
        self._demand.tenant_finished(run.tenant)
        self._fleet.job_finished(run.worker_id, now=now)
        self._changed()
        return True

    # -- pools and workers -----------------------------------------------------------------

    def upsert_pool(self, pool: PoolInfo, *, sent_at: float | None = None) -> None:
        """A pool registered or sent a heartbeat: take its status, GPUs and workers as
        reported, and keep ``pool`` (see :meth:`pool_info`). ``sent_at``: the heartbeat's
        own timestamp (``None`` for a registration, which forgets the previous one). Workers
        it no longer reports are forgotten, except starts the orchestrator requested that no
        heartbeat has shown yet (kept up to ``pending_start_ttl_s``)."""
        self._fleet.upsert_pool(pool)
        self._pool_infos[pool.pool_id] = pool
        if sent_at is None:
            self._sent_at.pop(pool.pool_id, None)
        else:
            self._sent_at[pool.pool_id] = sent_at
        self._changed()

    def remove_pool(self, pool_id: str) -> None:
        """A pool unregistered (or was removed by an operator): its GPUs and workers are
        gone. Jobs running there stay running until the daemon fails or re-queues them."""
        if not self._fleet.remove_pool(pool_id):
            raise PoolNotFound(pool_id)
        self._pool_infos.pop(pool_id, None)
        self._sent_at.pop(pool_id, None)
        self._parts.ctx_cache.pop(pool_id, None)
        self._changed()

    def set_pool_status(self, pool_id: str, status: PoolStatus | str) -> None:
        """A new status was derived for a pool (e.g. from its heartbeat's age)."""
        rec = self._pool(pool_id)
        status = PoolStatus(status)
        if status is rec.status:
            return
        self._fleet.set_pool_status(rec, status)
        self._changed()

    def mark_worker(self, worker_id: str, status: WorkerStatus | str) -> None:
        """A worker changed state outside a heartbeat (e.g. finished loading: ready;
        crashed: failed). Its slots stay governed by the jobs the state knows of."""
        self._fleet.mark_worker(self._worker(worker_id), WorkerStatus(status))
        self._changed()

    def start_requested(
        self,
        pool_id: str,
        gpu_id: str,
        model_ref: str,
        *,
        now: float,
        vram_bytes: int | None = None,
        max_concurrency: int = 1,
    ) -> str:
        """The orchestrator asked ``pool_id`` to start ``model_ref`` on ``gpu_id``: reserve
        the VRAM and count a starting worker for the model at once, so the next cycle does
        not start a second one for the same demand. Returns the placeholder's id (see
        :data:`PENDING_PREFIX`) for :meth:`start_confirmed` / :meth:`start_failed`."""
        wid = self._fleet.start_requested(
            self._pool(pool_id),
            gpu_id,
            model_ref,
            now=now,
            vram_bytes=vram_bytes,
            max_concurrency=max_concurrency,
        )
        self._changed()
        return wid

    def start_confirmed(self, placeholder_id: str, worker_id: str) -> None:
        """The pool accepted a start and named the worker. Until a heartbeat reports it, the
        worker stays a pending start under its real id."""
        self._fleet.start_confirmed(self._worker(placeholder_id), worker_id)
        self._changed()

    def start_failed(self, placeholder_id: str) -> None:
        """The pool refused or failed a requested start: release its reservation."""
        self.remove_worker(placeholder_id)

    def stop_requested(self, worker_id: str) -> None:
        """The orchestrator asked a pool to stop (evict) this worker: it takes no more jobs
        and its VRAM counts as released for the starts that follow."""
        if self._fleet.stop_requested(self._worker(worker_id)):
            self._changed()

    def remove_worker(self, worker_id: str) -> None:
        """A worker is gone (stopped, or a start that failed)."""
        self._fleet.remove_worker(self._worker(worker_id))
        self._changed()

    def learn_model_vram(self, model_ref: str, vram_bytes: int) -> bool:
        """Record the VRAM a worker of ``model_ref`` needs, learned outside a heartbeat (e.g.
        from a pool refusing a start with ``INSUFFICIENT_VRAM`` and the figure). Kept only if
        larger than what was learned before; the catalog's figure, when it has one, still
        wins. Returns whether anything changed. O(1)."""
        if not self._fleet.learn_vram(model_ref, vram_bytes):
            return False
        self._changed()
        return True

    def _pool(self, pool_id: str) -> PoolRecord:
        rec = self._fleet.pools.get(pool_id)
        if rec is None:
            raise PoolNotFound(pool_id)
        return rec

    def _worker(self, worker_id: str) -> WorkerRecord:
        worker = self._fleet.workers.get(worker_id)
        if worker is None:
            raise WorkerNotFound(worker_id)
        return worker

    # -- decisions and policy swaps --------------------------------------------------------

    def apply(self, decision: Decision, *, now: float) -> list[str]:
        """Apply a (validated) decision optimistically, before its I/O is done: dispatches
        occupy worker slots, rejects leave the queue, evictions stop workers, starts reserve
        capacity. Returns the placeholder ids of the starts, in order. The daemon corrects
        reality later with the usual events (job_finished, upsert_pool, start_failed...)."""
        placeholders: list[str] = []
        for act in iter_actions(decision):
            if isinstance(act, Dispatch):
                self.job_dispatched(act.job_id, act.worker_id, now=now)
            elif isinstance(act, Reject):
                self.remove_job(act.job_id)
            elif isinstance(act, StartWorker):
                placeholders.append(
                    self.start_requested(act.pool_id, act.gpu_id, act.model_ref, now=now)
                )
            elif isinstance(act, EvictWorker):
                self.stop_requested(act.worker_id)
        return placeholders

    def reindex(
        self, *, order: QueueOrder | None = None, placement: Placement | None = None
    ) -> None:
        """Switch queue order and/or placement (a policy hot-swap): O(n log n) once."""
        if placement is not None and placement is not self.placement:
            self._fleet.counts.set_placement(placement)
        if order is not None and order is not self._queue.order:
            self._queue.reorder(order)
        self._changed()
