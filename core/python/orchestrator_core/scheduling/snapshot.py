"""SchedulingSnapshot: the read-only view one scheduling decision reads.

A snapshot is a thin view over the indexes of a
:class:`~orchestrator_core.scheduling.state.ClusterState` at a given ``now``: making one
copies nothing. It is valid until the state changes; any
read after that raises :class:`SnapshotStale` (decide, then apply, then take a new one).

It is the one read API of the state for whoever decides: the built-in scheduler, the
validator, the Rhai ``ctx`` builder and tools. Besides frozen views (:meth:`worker`,
:meth:`pool`, :meth:`gpu`, :meth:`tenant`...) it offers the planners' reads, which walk the
state's indexes without copying them:

* demand: :meth:`dispatchable_models`, :meth:`cold_models`, :meth:`scaling_models` (models
  keyed by their best queued job), :meth:`tenant_heads` and :meth:`tenant_jobs` (a model's
  queued jobs per tenant), :meth:`model_queued`, :meth:`model_demand`;
* fleet: :meth:`free_worker_lists` (a model's free workers by placement key),
  :meth:`gpu_runs` (GPUs sorted by free, reclaimable or drainable VRAM), :meth:`largest_gpu`,
  the records :meth:`worker_record` and :meth:`gpu_record` (read-only), and the VRAM rules
  :meth:`worker_vram`, :meth:`worker_share`, :meth:`worker_gpu_free`.

Sorted sequences it returns are live: read them during the decision, never change them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from orchestrator_core.errors import ErrorCode, OrchestratorError
from orchestrator_core.jobs import Priority
from orchestrator_core.pools import PoolStatus
from orchestrator_core.scheduling.catalog import ModelInfo
from orchestrator_core.scheduling.ctx import build_ctx
from orchestrator_core.scheduling.fleet_views import (
    could_ever_fit,
    free_worker_views,
    gpu_view,
    pool_can_load,
    pool_view,
    pools_by_status,
    status_counts,
    worker_view,
)
from orchestrator_core.scheduling.gpu_index import GpuSort
from orchestrator_core.scheduling.indexes import SortedSeq
from orchestrator_core.scheduling.parts import Generation, StateParts
from orchestrator_core.scheduling.placement import Placement
from orchestrator_core.scheduling.records import GpuRecord, WorkerRecord
from orchestrator_core.scheduling.views import (
    GpuView,
    PoolView,
    QueuedJob,
    TenantView,
    WorkerView,
)

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig

__all__ = ["SchedulingSnapshot", "SnapshotStale"]


class SnapshotStale(OrchestratorError):
    """The cluster state changed after this snapshot was taken; take a new one."""

    code = ErrorCode.SCHEDULER_ERROR

    def __init__(self) -> None:
        super().__init__("the cluster state changed after this snapshot was taken")


class SchedulingSnapshot:
    """A read-only view of the cluster at ``now`` (Unix seconds). Cheap to make; every read
    raises :class:`SnapshotStale` once the state has changed."""

    __slots__ = ("_config", "_generation", "_parts", "now", "version")

    def __init__(
        self,
        parts: StateParts,
        generation: Generation,
        *,
        now: float,
        version: int,
        config: OrchestratorConfig | None,
    ) -> None:
        self._parts = parts
        self._generation = generation
        self._config = config
        self.now = now
        self.version = version

    @property
    def stale(self) -> bool:
        """True once the state changed after the snapshot was taken."""
        return self._generation.stale

    # -- what the state is indexed by --------------------------------------------------------

    @property
    def order_name(self) -> str:
        """Name of the queue order the jobs are sorted by."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.queue.order.name

    @property
    def placement_name(self) -> str:
        """Name of the placement the free workers are sorted by."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.placement.name

    @property
    def placement(self) -> Placement:
        """The placement plugin the free workers are sorted by (for re-keying a worker)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.placement

    @property
    def enforce_quotas(self) -> bool:
        """Whether tenants' ``max_running`` quotas apply."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.enforce_quotas

    @property
    def quota_action(self) -> str:
        """``wait`` or ``reject`` for a tenant at its quota."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.quota_action

    @property
    def config(self) -> OrchestratorConfig | None:
        """The configuration the state was built from, if any."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._config

    @property
    def dispatch_seq(self) -> int:
        """The state's dispatch sequence number (the last dispatch's; round-robin keys)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.dispatch_seq

    # -- jobs -----------------------------------------------------------------------------------

    def job(self, job_id: str) -> QueuedJob | None:
        """The queued job with this id, or ``None`` (also for running jobs)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.queue.get(job_id)

    def is_running(self, job_id: str) -> bool:
        """Whether the job was dispatched and has not finished."""
        if self._generation.stale:
            raise SnapshotStale()
        return job_id in self._parts.running

    def running_worker(self, job_id: str) -> str | None:
        """The worker a running job was dispatched to, or ``None``."""
        if self._generation.stale:
            raise SnapshotStale()
        run = self._parts.running.get(job_id)
        return None if run is None else run.worker_id

    def jobs(self, limit: int | None = None, *, cls: int | None = None) -> list[QueuedJob]:
        """The first ``limit`` queued jobs in queue order (of one order class if given)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.queue.ordered(limit, cls=cls)

    def queued_count(self, priority: Priority | None = None) -> int:
        """Queued jobs, in total or of one submitted priority."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.queue.count(priority)

    def class_count(self, cls: int) -> int:
        """Queued jobs in order class ``cls`` (0 includes promoted batch jobs)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.queue.class_count(cls)

    def mean_queued_at(self) -> float:
        """Mean ``queued_at`` of the queued jobs (0 when empty)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.queue.mean_queued_at()

    def position(self, job_id: str) -> int:
        """Jobs ahead of ``job_id`` in queue order."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.queue.position(job_id)

    # -- demand (planners) ------------------------------------------------------------------------

    def dispatchable_models(self, cls: int) -> SortedSeq:
        """Models with a queued job of class ``cls`` and a free worker, best job first:
        ``((tag, seq) of the model's best job, model_ref)``."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.dispatchable(cls)

    def cold_models(self, cls: int) -> SortedSeq:
        """Models with a queued job of class ``cls`` and no live worker, as
        :meth:`dispatchable_models`."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.cold(cls)

    def scaling_models(self, cls: int) -> SortedSeq:
        """Models with a queued job of class ``cls`` and more queued jobs than live worker
        slots, as :meth:`dispatchable_models`."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.scaling(cls)

    def tenant_heads(self, model_ref: str, cls: int) -> SortedSeq:
        """The head job of each tenant with jobs of a model in class ``cls`` (parked tenants
        excluded): ``((tag, seq), tenant)``, best first."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.heads(model_ref, cls)

    def tenant_jobs(self, model_ref: str, tenant: str, cls: int) -> SortedSeq:
        """A tenant's queued jobs of a model in class ``cls``: ``(tag, seq, job_id)``."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.tenant_jobs(model_ref, tenant, cls)

    def model_tenants(self, model_ref: str) -> list[str]:
        """Tenants with queued jobs of a model (``""``: no tenant), first arrival first."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.model_tenants(model_ref)

    def model_queued(self, model_ref: str) -> int:
        """Queued jobs of a (canonical) model."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.queued(model_ref)

    def model_demand(self, model_ref: str) -> int:
        """Queued jobs of a (canonical) model whose tenant is not parked at its quota."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.demand(model_ref)

    def tenant(self, tenant_id: str) -> TenantView:
        """A tenant's weight, quotas and usage."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.tenant_view(tenant_id)

    def tenant_ids(self) -> list[str]:
        """Configured tenants and tenants with queued or running jobs, sorted."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.demand.tenant_ids()

    # -- fleet: views ---------------------------------------------------------------------------

    def worker(self, worker_id: str) -> WorkerView | None:
        """One worker (effective status), or ``None``."""
        if self._generation.stale:
            raise SnapshotStale()
        return worker_view(self._parts.fleet, worker_id)

    def pool(self, pool_id: str) -> PoolView | None:
        """One pool, or ``None``."""
        if self._generation.stale:
            raise SnapshotStale()
        return pool_view(self._parts.fleet, pool_id)

    def gpu(self, pool_id: str, gpu_id: str) -> GpuView | None:
        """One GPU of a pool, or ``None``."""
        if self._generation.stale:
            raise SnapshotStale()
        return gpu_view(self._parts.fleet, pool_id, gpu_id)

    def pool_ids(self) -> list[str]:
        """Every pool id, sorted."""
        if self._generation.stale:
            raise SnapshotStale()
        return sorted(self._parts.fleet.pools)

    def pool_revision(self, pool_id: str) -> int | None:
        """A number that changes whenever anything in the pool's :meth:`pool`, :meth:`gpu`
        or :meth:`worker` views may have (``None``: unknown pool)."""
        if self._generation.stale:
            raise SnapshotStale()
        rec = self._parts.fleet.pools.get(pool_id)
        return None if rec is None else rec.version

    def free_workers(self, model_ref: str, limit: int = 10) -> list[WorkerView]:
        """Workers of a model with a free slot, best first for the placement."""
        if self._generation.stale:
            raise SnapshotStale()
        fleet = self._parts.fleet
        return free_worker_views(fleet, fleet.models.resolve(model_ref), limit)

    def live_slots(self, model_ref: str) -> int:
        """Slots of ready, busy and starting workers of a model (pools not offline)."""
        if self._generation.stale:
            raise SnapshotStale()
        fleet = self._parts.fleet
        return fleet.counts.live[fleet.models.resolve(model_ref)]

    def pool_can_load(self, pool_id: str, model_ref: str) -> bool:
        """Whether a pool can start workers of a model."""
        if self._generation.stale:
            raise SnapshotStale()
        return pool_can_load(self._parts.fleet, pool_id, model_ref)

    def workers_by_status(self) -> dict[str, int]:
        """Workers by effective status."""
        if self._generation.stale:
            raise SnapshotStale()
        return status_counts(self._parts.fleet)

    def pools_by_status(self) -> dict[str, int]:
        """Pools by status."""
        if self._generation.stale:
            raise SnapshotStale()
        return pools_by_status(self._parts.fleet)

    # -- fleet: records and indexes (planners) -------------------------------------------------

    def worker_record(self, worker_id: str) -> WorkerRecord | None:
        """The state's record of a worker (read it, never change it), or ``None``."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.workers.get(worker_id)

    def gpu_record(self, pool_id: str, gpu_id: str) -> GpuRecord | None:
        """The state's record of a GPU (read it, never change it), or ``None``."""
        if self._generation.stale:
            raise SnapshotStale()
        rec = self._parts.fleet.pools.get(pool_id)
        return None if rec is None else rec.gpus.get(gpu_id)

    def free_worker_lists(self, model_ref: str) -> tuple[SortedSeq, SortedSeq] | None:
        """A (canonical) model's workers with a free slot, on online pools and on degraded
        ones: ``(placement key, worker_id)``, best first; ``None`` if it never had one."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.free_lists(model_ref)

    def free_worker_count(self, model_ref: str) -> int:
        """Workers of a (canonical) model with a free slot."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.free_count(model_ref)

    def worker_vram(self, worker: WorkerRecord) -> int:
        """VRAM a worker holds: its own report, else its model's figure."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.vram(worker)

    def worker_share(self, worker: WorkerRecord) -> int:
        """VRAM a worker holds on each of its GPUs
        (:func:`~orchestrator_core.scheduling.views.vram_share`)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.share(worker)

    def worker_gpu_free(self, worker: WorkerRecord) -> int:
        """Free VRAM of a worker's GPUs (what placements weigh)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.gpu_free_of(worker)

    def gpu_runs(
        self, model_ref: str, status: PoolStatus, by: GpuSort, at_least: int
    ) -> list[Iterator[tuple[int, str, str]]]:
        """GPUs of pools in ``status`` that can load ``model_ref``, one ascending run per
        group of interchangeable GPUs: ``(bytes, pool_id, gpu_id)`` sorted ``by`` free VRAM,
        VRAM free once idle workers are evicted (``reclaimable``) or once ready and busy
        workers stop (``drainable``), from the first with ``at_least`` bytes."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.gpus.runs(model_ref, status, by, at_least)

    def largest_gpu(
        self, model_ref: str | None = None, statuses: Collection[PoolStatus] | None = None
    ) -> int | None:
        """Total VRAM of the largest GPU of a pool in ``statuses`` (default: any) that can
        load ``model_ref`` (default: any); ``None`` if there is none."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.counts.gpus.largest(model_ref, statuses)

    def pool_count(self) -> int:
        """Registered pools."""
        if self._generation.stale:
            raise SnapshotStale()
        return len(self._parts.fleet.pools)

    def could_ever_fit(self, model_ref: str) -> bool | None:
        """Whether a registered pool could ever host the model (``None``: no GPU known)."""
        if self._generation.stale:
            raise SnapshotStale()
        return could_ever_fit(self._parts.fleet, model_ref)

    # -- catalog --------------------------------------------------------------------------------

    def resolve_model(self, name: str) -> str:
        """Canonical ref of a model ref or alias."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.models.resolve(name)

    def model(self, name: str) -> ModelInfo | None:
        """The model (ref or alias) with its VRAM need, or ``None`` if nothing knows it."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.models.info(name)

    def model_known(self, name: str) -> bool:
        """Whether the catalog, a pool or a worker knows the model."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.models.known(name)

    def model_vram(self, name: str) -> int:
        """VRAM a worker of the model needs (0 = unknown)."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.models.vram(name)

    def model_names(self) -> list[str]:
        """Every model the catalog, the pools or the workers know, sorted."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.models.names()

    def model_aliases(self) -> dict[str, str]:
        """The catalog's aliases: alias -> model ref."""
        if self._generation.stale:
            raise SnapshotStale()
        return self._parts.fleet.models.catalog.aliases()

    # -- Rhai ctx -------------------------------------------------------------------------------

    def to_ctx(self, window: int | None = None) -> dict[str, Any]:
        """The Rhai ``ctx`` map (docs/design/rhai-policies.md). Times are Unix milliseconds.

        ``queue`` holds at most ``window`` jobs of each order class (class 0: interactive and
        promoted batch; class 1: batch), in queue order; ``queue_info`` says how many there
        are and whether the window cut some. ``window`` defaults to
        ``config.scheduler.snapshot_window`` (256). Building it costs O(window + pools +
        GPUs + workers); each pool's map is cached until that pool changes, so the returned
        structure shares sub-maps between calls: treat it as read-only.
        """
        if self._generation.stale:
            raise SnapshotStale()
        return build_ctx(self._parts, self.now, window, self._config)
