"""ClusterState: the daemon's mutable, indexed picture of the queue and the fleet.

The daemon owns one :class:`ClusterState` and tells it about every event — a job queued,
cancelled, dispatched or finished, a pool registered or heartbeating, a worker changing
state, a decision applied. Each event updates a handful of indexes in O(log n); a scheduler
then reads :meth:`ClusterState.snapshot`, a read-only view over those indexes that costs
nothing to make. No scheduling decision scans the queue or the fleet.

Indexes (n = queued jobs, W = workers, M = models, G = GPUs):

* queued jobs: per model, per tenant, per order class, sorted by the queue order's
  ``(tag, seq)`` key; each model's best tenant head per class; and, per class, the models
  with a job waiting keyed by their head — split into *dispatchable* (the model has a free
  ready worker), *cold* (no live worker at all: needs a start) and *scaling* (more demand
  than live worker slots). The next job to dispatch is the first entry of the dispatchable
  index: jobs whose model has no free worker never block the others (no head-of-line
  blocking), and priority order holds among the dispatchable ones;
* a global order per class (positions, Rhai windows) and a batch-age index (promotion);
* free workers per model, sorted by the placement key, split online / degraded;
* GPUs grouped by (pool status, models the pool can load), sorted by free VRAM and by VRAM
  reclaimable from idle workers and by VRAM of ready or busy workers (what draining could
  free), for best-fit starts, eviction plans and drain plans;
* counters: live worker slots per model (ready + busy + starting, so a starting worker is
  counted as pending capacity and is not started twice), tenants' queued/running jobs.

Worker status is the pool's report corrected by what the orchestrator did since: a job
dispatched a moment ago makes a single-slot worker busy before any heartbeat says so, and a
finished job frees it before the next heartbeat. A worker's load is the jobs the state knows
run there plus whatever the last report showed beyond them (jobs it does not know, or a
report that had not seen a finish yet), so a report can make a worker busier until the next
one, never freer than the known jobs allow.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from sortedcontainers import SortedList

from orchestrator_core.errors import ErrorCode, JobNotFound, OrchestratorError, PoolNotFound
from orchestrator_core.jobs import Job, JobStatus, Priority
from orchestrator_core.pools import PoolInfo, PoolStatus, WorkerInfo, WorkerStatus
from orchestrator_core.scheduling.catalog import ModelCatalog, ModelInfo
from orchestrator_core.scheduling.decisions import (
    Decision,
    Dispatch,
    EvictWorker,
    Reject,
    StartWorker,
    iter_actions,
)
from orchestrator_core.scheduling.ordering import PriorityOrder, QueueOrder
from orchestrator_core.scheduling.placement import LeastLoadedPlacement, Placement
from orchestrator_core.scheduling.views import (
    GpuView,
    PoolView,
    QueuedJob,
    TenantView,
    WorkerView,
    placeable_vram,
    vram_share,
)

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig
    from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

__all__ = ["PENDING_PREFIX", "ClusterState", "TenantQuota", "WorkerNotFound"]

PENDING_PREFIX = "~pending-"
"""Ids of placeholder workers (a start requested, no worker id yet). ``~`` never appears in
a real worker id, so placeholders cannot collide with workers pools report."""

QuotaAction = Literal["wait", "reject"]
K = TypeVar("K")
JobKey = tuple[float, int, str]  # (tag, seq, job_id)

_ONLINE, _DEGRADED = 0, 1
_RECENT_FINISHED = 4096  # finished job ids remembered to recognise reports sent before the end
_LIVE = (WorkerStatus.READY, WorkerStatus.BUSY, WorkerStatus.STARTING)


class WorkerNotFound(OrchestratorError):
    """No worker with this id."""

    code = ErrorCode.WORKER_NOT_FOUND

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        super().__init__(f"worker {worker_id} not found", details={"worker_id": worker_id})


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """A tenant's fair-share weight and quotas (``None`` = unlimited)."""

    tenant_id: str
    weight: float = 1.0
    max_queued: int | None = None
    max_running: int | None = None


class _KeyedIndex(Generic[K]):
    """A sorted set of ``(key, id)`` with O(1) lookup of an id's current key."""

    __slots__ = ("keys", "sl")

    def __init__(self) -> None:
        self.keys: dict[str, K] = {}
        self.sl: Any = SortedList()

    def set(self, ident: str, key: K | None) -> None:
        old = self.keys.get(ident)
        if old is None:
            if key is None:
                return
        elif old == key:
            return
        else:
            self.sl.remove((old, ident))
        if key is None:
            del self.keys[ident]
        else:
            self.keys[ident] = key
            self.sl.add((key, ident))

    def first(self) -> tuple[K, str] | None:
        sl = self.sl
        return sl[0] if sl else None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, ident: object) -> bool:
        return ident in self.keys


class _Group:
    """Queued jobs of one (model, tenant), one sorted list per order class."""

    __slots__ = ("lists", "model_ref", "parked", "tenant")

    def __init__(self, model_ref: str, tenant: str, parked: bool) -> None:
        self.model_ref = model_ref
        self.tenant = tenant
        self.parked = parked
        self.lists: tuple[Any, Any] = (SortedList(), SortedList())

    def size(self) -> int:
        return len(self.lists[0]) + len(self.lists[1])


class _ModelQueue:
    """Queued jobs of one model: its groups and, per class, their heads."""

    __slots__ = ("groups", "heads", "model_ref", "queued", "unparked")

    def __init__(self, model_ref: str) -> None:
        self.model_ref = model_ref
        self.groups: dict[str, _Group] = {}
        self.heads: tuple[_KeyedIndex[tuple[float, int]], _KeyedIndex[tuple[float, int]]] = (
            _KeyedIndex(),
            _KeyedIndex(),
        )
        self.queued = 0
        self.unparked = 0


class _Tenant:
    __slots__ = (
        "max_queued",
        "max_running",
        "models",
        "parked",
        "queued",
        "running",
        "tenant_id",
        "weight",
    )

    def __init__(self, quota: TenantQuota) -> None:
        self.tenant_id = quota.tenant_id
        self.weight = quota.weight
        self.max_queued = quota.max_queued
        self.max_running = quota.max_running
        self.queued = 0
        self.running = 0
        self.parked = False
        self.models: Counter[str] = Counter()


@dataclass(slots=True)
class _Running:
    worker_id: str
    tenant: str
    model_ref: str
    job: Job


class _Worker:
    """A worker record: the pool's last report plus what the orchestrator did since."""

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
        # contributions currently counted in the state's indexes and sums
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
        """Effective status (see the module docstring)."""
        if self.stopping:
            return WorkerStatus.DRAINING
        reported = self.reported_status
        if reported is WorkerStatus.READY or reported is WorkerStatus.BUSY:
            return WorkerStatus.READY if self.active() < self.max_concurrency else WorkerStatus.BUSY
        return reported


class _Gpu:
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
        self.c_group: _GpuGroup | None = None
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


class _GpuGroup:
    """GPUs of pools with one status and one set of loadable models (empty = any model)."""

    __slots__ = ("drain_idx", "free_idx", "key", "models", "reclaim_idx", "status", "totals")

    def __init__(self, status: PoolStatus, models: frozenset[str]) -> None:
        self.status = status
        self.models = models
        self.key = (status, models)
        self.free_idx: Any = SortedList()  # (free, pool_id, gpu_id)
        self.reclaim_idx: Any = SortedList()  # (free after evicting idle, pool_id, gpu_id)
        self.drain_idx: Any = SortedList()  # (free after stopping ready/busy, pool, gpu)
        self.totals: Any = SortedList()  # vram_total_bytes

    def can_load(self, model_ref: str) -> bool:
        return not self.models or model_ref in self.models


class _Pool:
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
        self.gpus: dict[str, _Gpu] = {}
        self.workers: set[str] = set()
        self.version = 0

    def can_load(self, model_ref: str) -> bool:
        return not self.models or model_ref in self.models


class ClusterState:
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
        self._order: QueueOrder = order if order is not None else PriorityOrder()
        self._placement: Placement = placement if placement is not None else LeastLoadedPlacement()
        self._catalog = catalog if catalog is not None else ModelCatalog()
        self._quotas = {t.tenant_id: t for t in tenants}
        self.enforce_quotas = enforce_quotas
        self.quota_action: QuotaAction = quota_action
        self.max_promotions_per_snapshot = max_promotions_per_snapshot
        self.pending_start_ttl_s = pending_start_ttl_s
        self.config = config
        self._version = 0
        self._seq = 0  # dispatch sequence number (round-robin placement)
        self._job_seq = itertools.count(1)
        self._pending_seq = itertools.count(1)
        # jobs
        self._jobs: dict[str, QueuedJob] = {}
        self._models: dict[str, _ModelQueue] = {}
        self._order_idx: tuple[Any, Any] = (SortedList(), SortedList())
        self._promo: Any = SortedList()  # (queued_at, seq, job_id) of class-1 jobs
        self._by_priority: Counter[Priority] = Counter()
        self._queued_at_sum = 0.0
        self._running: dict[str, _Running] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # recent ends, for stale reports
        self._running_on: dict[str, set[str]] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._dispatchable = (_KeyedIndex[tuple[float, int]](), _KeyedIndex[tuple[float, int]]())
        self._cold = (_KeyedIndex[tuple[float, int]](), _KeyedIndex[tuple[float, int]]())
        self._scaling = (_KeyedIndex[tuple[float, int]](), _KeyedIndex[tuple[float, int]]())
        # fleet
        self._pools: dict[str, _Pool] = {}
        self._workers: dict[str, _Worker] = {}
        self._free: dict[str, tuple[_KeyedIndex[Any], _KeyedIndex[Any]]] = {}
        self._live: Counter[str] = Counter()
        self._worker_models: Counter[str] = Counter()
        self._pool_models: Counter[str] = Counter()
        self._learned_vram: dict[str, int] = {}
        self._relearned: set[str] = set()  # models whose VRAM figure rose: recount workers
        self._status_counts: Counter[WorkerStatus] = Counter()
        self._gpu_groups: dict[tuple[PoolStatus, frozenset[str]], _GpuGroup] = {}
        self._groups_cache: dict[tuple[str, PoolStatus], list[_GpuGroup]] = {}
        self._ctx_cache: dict[str, tuple[int, dict[str, Any]]] = {}

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: OrchestratorConfig) -> ClusterState:
        """A state with the queue order, placement, catalog, tenants and quota settings of
        ``config`` (quotas are enforced in platform mode)."""
        from orchestrator_core.scheduling.scheduler import build_placement, build_queue_order

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

    # -- read access -----------------------------------------------------------------------

    @property
    def order(self) -> QueueOrder:
        """The queue order the job indexes are sorted by."""
        return self._order

    @property
    def placement(self) -> Placement:
        """The placement the free-worker index is sorted by."""
        return self._placement

    @property
    def catalog(self) -> ModelCatalog:
        """The configured model catalog."""
        return self._catalog

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
        from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

        self._promote_due(now)
        return SchedulingSnapshot(self, now)

    def __len__(self) -> int:
        """Number of queued jobs."""
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        """Whether ``job_id`` is queued."""
        return job_id in self._jobs

    def get_job(self, job_id: str) -> QueuedJob | None:
        """The queued job with this id, or ``None``."""
        return self._jobs.get(job_id)

    def is_running(self, job_id: str) -> bool:
        """Whether ``job_id`` was dispatched and has not finished."""
        return job_id in self._running

    def running_worker(self, job_id: str) -> str | None:
        """The worker a running job was dispatched to, or ``None``."""
        run = self._running.get(job_id)
        return None if run is None else run.worker_id

    def position(self, job_id: str) -> int:
        """Queued jobs ahead of ``job_id`` in the queue order (0 = next); O(log n)."""
        qj = self._jobs.get(job_id)
        if qj is None:
            raise JobNotFound(job_id)
        key = (qj.tag, qj.seq, qj.job_id)
        if qj.cls == 0:
            return int(self._order_idx[0].index(key))
        return len(self._order_idx[0]) + int(self._order_idx[1].index(key))

    def ordered_jobs(self, limit: int | None = None, *, cls: int | None = None) -> list[QueuedJob]:
        """The first ``limit`` queued jobs in queue order (of one class if ``cls`` is given)."""
        out: list[QueuedJob] = []
        for c in (0, 1) if cls is None else (cls,):
            room = None if limit is None else limit - len(out)
            if room is not None and room <= 0:
                break
            out.extend(self._jobs[k[2]] for k in self._order_idx[c].islice(0, room))
        return out

    def mean_queued_at(self) -> float:
        """Mean ``queued_at`` of the queued jobs (0 when empty); O(1)."""
        return self._queued_at_sum / len(self._jobs) if self._jobs else 0.0

    def queued_count(self, priority: Priority | None = None) -> int:
        """Queued jobs in total, or of one submitted priority."""
        return len(self._jobs) if priority is None else self._by_priority[priority]

    def class_count(self, cls: int) -> int:
        """Queued jobs in order class ``cls`` (0 includes promoted batch jobs)."""
        return len(self._order_idx[cls])

    def resolve_model(self, name: str) -> str:
        """Canonical model ref of a ref or alias."""
        return self._catalog.resolve(name)

    def model_vram(self, model_ref: str) -> int:
        """VRAM a worker of this model needs: the catalog's figure, else the most a running
        worker of it reported, else 0 (unknown)."""
        info = self._catalog.get(model_ref)
        if info is not None and info.vram_bytes > 0:
            return info.vram_bytes
        return self._learned_vram.get(self._catalog.resolve(model_ref), 0)

    def learn_model_vram(self, model_ref: str, vram_bytes: int) -> bool:
        """Record the VRAM a worker of ``model_ref`` needs, learned outside a heartbeat (e.g.
        from a pool refusing a start with ``INSUFFICIENT_VRAM`` and the figure). Kept only if
        larger than what was learned before; the catalog's figure, when it has one, still
        wins. Returns whether anything changed. O(1)."""
        ref = self._catalog.resolve(model_ref)
        if not self._learn_vram(ref, vram_bytes):
            return False
        self._recount_relearned()
        self._version += 1
        return True

    def model_known(self, model_ref: str) -> bool:
        """Whether the catalog, a pool or a worker knows this model."""
        ref = self._catalog.resolve(model_ref)
        return ref in self._catalog or self._pool_models[ref] > 0 or self._worker_models[ref] > 0

    def model_info(self, model_ref: str) -> ModelInfo | None:
        """Catalog entry (with learned VRAM if the catalog had none), or ``None`` if unknown."""
        ref = self._catalog.resolve(model_ref)
        info = self._catalog.get(ref)
        if info is None:
            if not self.model_known(ref):
                return None
            return ModelInfo(ref, vram_bytes=self.model_vram(ref))
        if info.vram_bytes == 0 and ref in self._learned_vram:
            return ModelInfo(
                ref, info.aliases, self._learned_vram[ref], info.context_length, info.family
            )
        return info

    def known_models(self) -> list[str]:
        """Every model the catalog, the pools or the workers know, sorted."""
        names = {m.model_ref for m in self._catalog}
        names.update(m for m, n in self._pool_models.items() if n > 0)
        names.update(m for m, n in self._worker_models.items() if n > 0)
        return sorted(names)

    # -- jobs ------------------------------------------------------------------------------

    def add_job(self, job: Job) -> QueuedJob:
        """A queued job arrived (submitted, restored after a restart, or re-queued for a
        retry). Its model alias is resolved; its key comes from the queue order."""
        if job.status is not JobStatus.QUEUED:
            raise ValueError(f"job {job.job_id}: only queued jobs can be added ({job.status})")
        if job.job_id in self._jobs or job.job_id in self._running:
            raise ValueError(f"job {job.job_id} is already known to the cluster state")
        qj = QueuedJob(job, self._catalog.resolve(job.model_ref), next(self._job_seq))
        qj.cls = self._order.class_of(job.priority)
        qj.tag = self._order.tag(qj, qj.cls)
        self._jobs[qj.job_id] = qj
        self._by_priority[qj.priority] += 1
        self._queued_at_sum += qj.queued_at
        tenant = self._tenant(qj.tenant_key)
        tenant.queued += 1
        tenant.models[qj.model_ref] += 1
        self._insert(qj)
        self._version += 1
        return qj

    def remove_job(self, job_id: str) -> Job:
        """A queued job left without running (cancelled, expired, dropped, rejected)."""
        qj = self._jobs.get(job_id)
        if qj is None:
            raise JobNotFound(job_id)
        self._drop_job(qj, served=False)
        self._version += 1
        return qj.job

    def job_dispatched(self, job_id: str, worker_id: str, *, now: float) -> None:
        """A queued job was sent to ``worker_id``: it leaves the queue and occupies a slot
        of the worker until :meth:`job_finished`."""
        qj = self._jobs.get(job_id)
        if qj is None:
            raise JobNotFound(job_id)
        worker = self._workers.get(worker_id)
        if worker is None:
            raise WorkerNotFound(worker_id)
        self._drop_job(qj, served=True)
        self._start_running(qj.job, qj.tenant_key, qj.model_ref, worker_id)
        worker.last_dispatch = self._seq
        self._refresh_worker(worker)
        self._version += 1

    def restore_running(self, job: Job, worker_id: str) -> None:
        """A job already running on ``worker_id`` (after a daemon restart): it counts against
        the worker's slots and the tenant's quota until :meth:`job_finished`."""
        if job.job_id in self._jobs or job.job_id in self._running:
            raise ValueError(f"job {job.job_id} is already known to the cluster state")
        model_ref = self._catalog.resolve(job.model_ref)
        self._start_running(job, job.tenant_id or "", model_ref, worker_id)
        worker = self._workers.get(worker_id)
        if worker is not None:
            self._refresh_worker(worker)
        self._version += 1

    def job_finished(self, job_id: str, *, now: float) -> bool:
        """A running job ended (any outcome, or failed to dispatch): its worker slot and its
        tenant's quota are free again. Returns ``False`` if the job was not running."""
        run = self._running.pop(job_id, None)
        if run is None:
            return False
        self._finished[job_id] = None
        if len(self._finished) > _RECENT_FINISHED:
            self._finished.popitem(last=False)
        tenant = self._tenant(run.tenant)
        tenant.running -= 1
        self._update_parking(tenant)
        on = self._running_on.get(run.worker_id)
        if on is not None:
            on.discard(job_id)
            if not on:
                del self._running_on[run.worker_id]
        worker = self._workers.get(run.worker_id)
        if worker is not None:
            worker.own_active = len(on) if on else 0
            worker.current_job_id = next(iter(on)) if on else None
            worker.last_used_at = now
            worker.jobs_completed += 1
            self._refresh_worker(worker)
        self._version += 1
        return True

    # -- pools and workers -----------------------------------------------------------------

    def upsert_pool(self, pool: PoolInfo) -> None:
        """A pool registered or sent a heartbeat: take its status, GPUs and workers as
        reported. Workers it no longer reports are forgotten, except starts the orchestrator
        requested that no heartbeat has shown yet (kept up to ``pending_start_ttl_s``)."""
        rec = self._pools.get(pool.pool_id)
        if rec is None:
            rec = self._pools[pool.pool_id] = _Pool(pool.pool_id)
        for m in rec.models:
            self._pool_models[m] -= 1
        old_workers = [self._workers[w] for w in rec.workers]
        for w in old_workers:
            self._refresh_worker(w, present=False)
        for gpu in rec.gpus.values():
            self._ungroup_gpu(gpu)
        rec.endpoint = pool.endpoint
        rec.status = PoolStatus(pool.status)
        rec.capabilities = tuple(pool.capabilities)
        rec.reported_models = tuple(pool.models)
        rec.models = frozenset(self._catalog.resolve(m) for m in pool.models)
        for m in rec.models:
            self._pool_models[m] += 1
        for m, vram in pool.model_vram_bytes.items():  # what the pool's launch configs need
            self._learn_vram(self._catalog.resolve(m), vram)
        rec.registered_at = pool.registered_at
        rec.last_heartbeat = pool.last_heartbeat
        rec.version += 1
        gpus: dict[str, _Gpu] = {}
        for info in pool.gpus:
            gpu = rec.gpus.get(info.gpu_id) or _Gpu(rec.pool_id, info.gpu_id)
            gpu.name = info.name
            gpu.total = info.vram_total_bytes
            gpu.reported_free = info.vram_free_bytes
            gpu.utilization = info.utilization
            gpu.released = 0
            gpu.workers = set()
            gpus[info.gpu_id] = gpu
        rec.gpus = gpus
        reported: set[str] = set()
        for winfo in pool.workers:
            reported.add(winfo.worker_id)
            worker = self._workers.get(winfo.worker_id)
            if worker is not None and worker.pool_id != rec.pool_id:
                self._forget_worker(worker)  # it moved to this pool
                worker = None
            if worker is None or worker.model_ref != self._catalog.resolve(winfo.model_ref):
                if worker is not None:
                    self._worker_models[worker.model_ref] -= 1
                worker = self._new_worker(winfo.worker_id, rec.pool_id, winfo.model_ref)
            self._take_report(worker, winfo)
        for worker in old_workers:
            if worker.worker_id in reported:
                continue
            expired = (
                worker.requested_at is not None
                and pool.last_heartbeat - worker.requested_at > self.pending_start_ttl_s
            )
            if worker.pending and not expired:
                continue
            rec.workers.discard(worker.worker_id)
            self._workers.pop(worker.worker_id, None)
            self._worker_models[worker.model_ref] -= 1
        rec.workers = {w for w in rec.workers if w in self._workers} | reported
        self._attach_pool(rec)
        self._recount_relearned()
        self._version += 1

    def remove_pool(self, pool_id: str) -> None:
        """A pool unregistered (or was removed by an operator): its GPUs and workers are
        gone. Jobs running there stay running until the daemon fails or re-queues them."""
        rec = self._pools.pop(pool_id, None)
        if rec is None:
            raise PoolNotFound(pool_id)
        for wid in list(rec.workers):
            self._forget_worker(self._workers[wid])
        for gpu in rec.gpus.values():
            self._ungroup_gpu(gpu)
        for m in rec.models:
            self._pool_models[m] -= 1
        self._ctx_cache.pop(pool_id, None)
        self._version += 1

    def set_pool_status(self, pool_id: str, status: PoolStatus | str) -> None:
        """The registry derived a new status for a pool (e.g. from :meth:`sweep`)."""
        rec = self._pools.get(pool_id)
        if rec is None:
            raise PoolNotFound(pool_id)
        status = PoolStatus(status)
        if status is rec.status:
            return
        workers = [self._workers[w] for w in rec.workers]
        for w in workers:
            self._refresh_worker(w, present=False)
        for gpu in rec.gpus.values():
            self._ungroup_gpu(gpu)
        rec.status = status
        rec.version += 1
        self._attach_pool(rec)
        self._version += 1

    def mark_worker(self, worker_id: str, status: WorkerStatus | str) -> None:
        """A worker changed state outside a heartbeat (e.g. finished loading: ready;
        crashed: failed). Its slots stay governed by the jobs the state knows of."""
        worker = self._workers.get(worker_id)
        if worker is None:
            raise WorkerNotFound(worker_id)
        worker.reported_status = WorkerStatus(status)
        if worker.reported_status is WorkerStatus.READY:
            worker.unknown_active = 0
        elif worker.reported_status is WorkerStatus.BUSY:
            worker.take_reported_load(WorkerStatus.BUSY, 0)
        self._refresh_worker(worker)
        self._version += 1

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
        rec = self._pools.get(pool_id)
        if rec is None:
            raise PoolNotFound(pool_id)
        wid = f"{PENDING_PREFIX}{next(self._pending_seq)}"
        worker = self._new_worker(wid, pool_id, model_ref)
        worker.gpu_ids = (gpu_id,)
        worker.reported_status = WorkerStatus.STARTING
        worker.vram_bytes = vram_bytes if vram_bytes is not None else self.model_vram(model_ref)
        worker.max_concurrency = max_concurrency
        worker.pending = True
        worker.requested_at = now
        rec.workers.add(wid)
        if gpu_id in rec.gpus:
            rec.gpus[gpu_id].workers.add(wid)
        self._refresh_worker(worker)
        self._version += 1
        return wid

    def start_confirmed(self, placeholder_id: str, worker_id: str) -> None:
        """The pool accepted a start and named the worker. Until a heartbeat reports it, the
        worker stays a pending start under its real id."""
        worker = self._workers.get(placeholder_id)
        if worker is None:
            raise WorkerNotFound(placeholder_id)
        if worker_id in self._workers:
            self._forget_worker(worker)  # a heartbeat already reported the real worker
            self._version += 1
            return
        self._refresh_worker(worker, present=False)
        rec = self._pools[worker.pool_id]
        rec.workers.discard(placeholder_id)
        rec.workers.add(worker_id)
        for gid in worker.gpu_ids:
            gpu = rec.gpus.get(gid)
            if gpu is not None:
                gpu.workers.discard(placeholder_id)
                gpu.workers.add(worker_id)
        del self._workers[placeholder_id]
        worker.worker_id = worker_id
        self._workers[worker_id] = worker
        self._refresh_worker(worker)
        self._version += 1

    def start_failed(self, placeholder_id: str) -> None:
        """The pool refused or failed a requested start: release its reservation."""
        self.remove_worker(placeholder_id)

    def stop_requested(self, worker_id: str) -> None:
        """The orchestrator asked a pool to stop (evict) this worker: it takes no more jobs
        and its VRAM counts as released for the starts that follow."""
        worker = self._workers.get(worker_id)
        if worker is None:
            raise WorkerNotFound(worker_id)
        if worker.stopping:
            return
        rec = self._pools[worker.pool_id]
        worker.stopping = True
        self._refresh_worker(worker)
        for gid in worker.gpu_ids:
            gpu = rec.gpus.get(gid)
            if gpu is not None:
                gpu.released += self._share(worker)
                self._reindex_gpu(gpu)
        self._version += 1

    def remove_worker(self, worker_id: str) -> None:
        """A worker is gone (stopped, or a start that failed)."""
        worker = self._workers.get(worker_id)
        if worker is None:
            raise WorkerNotFound(worker_id)
        self._forget_worker(worker)
        self._version += 1

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
        if placement is not None and placement is not self._placement:
            self._placement = placement
            for worker in self._workers.values():
                if worker.c_slot is not None:
                    self._free_index(worker.model_ref)[worker.c_slot].set(
                        worker.worker_id, self._placement_key(worker, worker.active())
                    )
        if order is not None and order is not self._order:
            jobs = sorted(self._jobs.values(), key=lambda q: q.seq)
            for qj in jobs:
                self._unlink(qj)
            self._order = order
            self._promo = SortedList()
            for qj in jobs:
                qj.promoted = False
                qj.cls = order.class_of(qj.priority)
                qj.tag = order.tag(qj, qj.cls)
                self._insert(qj)
        self._version += 1

    # -- views for snapshots -----------------------------------------------------------------

    def tenant_view(self, tenant_id: str) -> TenantView:
        """Weight, quotas and usage of a tenant (unknown tenants: defaults, no usage)."""
        t = self._tenants.get(tenant_id)
        if t is None:
            q = self._quotas.get(tenant_id, TenantQuota(tenant_id))
            return TenantView(tenant_id, q.weight, q.max_queued, q.max_running, 0, 0)
        return TenantView(t.tenant_id, t.weight, t.max_queued, t.max_running, t.queued, t.running)

    def tenant_ids(self) -> list[str]:
        """Configured tenants and tenants with queued or running jobs, sorted."""
        active = {t for t, r in self._tenants.items() if r.queued or r.running}
        return sorted(active | set(self._quotas))

    def worker_view(self, worker_id: str) -> WorkerView | None:
        """One worker, or ``None``."""
        w = self._workers.get(worker_id)
        if w is None:
            return None
        active = w.active()
        status = w.status()
        pool = self._pools.get(w.pool_id)
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
            vram_bytes=self._vram(w),
            uri=w.uri,
            current_job_id=w.current_job_id,
            last_used_at=w.last_used_at,
            jobs_completed=w.jobs_completed,
            pending=w.pending,
            stopping=w.stopping,
        )

    def gpu_view(self, pool_id: str, gpu_id: str) -> GpuView | None:
        """One GPU, or ``None``."""
        rec = self._pools.get(pool_id)
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

    def pool_model_name(self, pool_id: str, model_ref: str) -> str:
        """The name ``pool_id`` itself uses for the canonical ``model_ref``: the model it
        reported that resolves to ``model_ref`` (an alias of the catalog, say), else
        ``model_ref``. A worker start must name the model the way the pool knows it."""
        rec = self._pools.get(pool_id)
        if rec is not None:
            for name in rec.reported_models:
                if name == model_ref:
                    return name
            for name in rec.reported_models:
                if self._catalog.resolve(name) == model_ref:
                    return name
        return model_ref

    def pool_view(self, pool_id: str) -> PoolView | None:
        """One pool, or ``None``."""
        rec = self._pools.get(pool_id)
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

    def pool_ids(self) -> list[str]:
        """Every pool id, sorted."""
        return sorted(self._pools)

    def worker_ids(self, model_ref: str | None = None) -> list[str]:
        """Every worker id (of one model if given), sorted. O(W): for tools, not decisions."""
        ref = None if model_ref is None else self._catalog.resolve(model_ref)
        return sorted(w for w, r in self._workers.items() if ref is None or r.model_ref == ref)

    def free_workers(self, model_ref: str, limit: int = 10) -> list[WorkerView]:
        """Workers of a model with a free slot, best first by the placement (online pools,
        then degraded ones)."""
        idx = self._free.get(self._catalog.resolve(model_ref))
        out: list[WorkerView] = []
        if idx is None:
            return out
        for slot in (_ONLINE, _DEGRADED):
            for _key, wid in idx[slot].sl.islice(0, max(0, limit - len(out))):
                view = self.worker_view(wid)
                if view is not None:
                    out.append(view)
        return out

    def pool_can_load(self, pool_id: str, model_ref: str) -> bool:
        """Whether a pool can start workers of this model (it lists it, or lists nothing)."""
        rec = self._pools.get(pool_id)
        return rec is not None and rec.can_load(self._catalog.resolve(model_ref))

    def live_slots(self, model_ref: str) -> int:
        """Slots of ready, busy and starting workers of a model on pools that are not
        offline (starting workers count: they are capacity on its way)."""
        return self._live[self._catalog.resolve(model_ref)]

    def status_counts(self) -> dict[str, int]:
        """Workers by effective status."""
        return {str(s): self._status_counts[s] for s in WorkerStatus}

    # -- internals: jobs ---------------------------------------------------------------------

    def _tenant(self, tenant_id: str) -> _Tenant:
        t = self._tenants.get(tenant_id)
        if t is None:
            t = self._tenants[tenant_id] = _Tenant(
                self._quotas.get(tenant_id, TenantQuota(tenant_id))
            )
            t.parked = self._should_park(t)
        return t

    def _should_park(self, t: _Tenant) -> bool:
        return (
            self.enforce_quotas
            and self.quota_action == "wait"
            and t.max_running is not None
            and t.running >= t.max_running
        )

    def _update_parking(self, t: _Tenant) -> None:
        park = self._should_park(t)
        if park == t.parked:
            return
        t.parked = park
        for model_ref in list(t.models):
            mq = self._models.get(model_ref)
            group = None if mq is None else mq.groups.get(t.tenant_id)
            if mq is None or group is None:
                continue
            group.parked = park
            mq.unparked += -group.size() if park else group.size()
            for cls in (0, 1):
                self._group_head(mq, group, cls)
            self._refresh_model(mq)

    def _insert(self, qj: QueuedJob) -> None:
        mq = self._models.get(qj.model_ref)
        if mq is None:
            mq = self._models[qj.model_ref] = _ModelQueue(qj.model_ref)
        tenant = qj.tenant_key
        group = mq.groups.get(tenant)
        if group is None:
            group = mq.groups[tenant] = _Group(qj.model_ref, tenant, self._tenant(tenant).parked)
        key = (qj.tag, qj.seq, qj.job_id)
        group.lists[qj.cls].add(key)
        self._order_idx[qj.cls].add(key)
        if qj.cls == 1 and self._order.promote_after_s is not None:
            self._promo.add((qj.queued_at, qj.seq, qj.job_id))
        mq.queued += 1
        if not group.parked:
            mq.unparked += 1
        self._group_head(mq, group, qj.cls)
        self._refresh_model(mq)

    def _unlink(self, qj: QueuedJob) -> None:
        """Take a job out of the job indexes (not the counters)."""
        mq = self._models[qj.model_ref]
        group = mq.groups[qj.tenant_key]
        key = (qj.tag, qj.seq, qj.job_id)
        group.lists[qj.cls].remove(key)
        self._order_idx[qj.cls].remove(key)
        if qj.cls == 1:
            self._promo.discard((qj.queued_at, qj.seq, qj.job_id))
        mq.queued -= 1
        if not group.parked:
            mq.unparked -= 1
        self._group_head(mq, group, qj.cls)
        if not group.size():
            del mq.groups[qj.tenant_key]
        self._refresh_model(mq)

    def _drop_job(self, qj: QueuedJob, *, served: bool) -> None:
        self._unlink(qj)
        del self._jobs[qj.job_id]
        self._by_priority[qj.priority] -= 1
        self._queued_at_sum -= qj.queued_at
        tenant = self._tenant(qj.tenant_key)
        tenant.queued -= 1
        tenant.models[qj.model_ref] -= 1
        if tenant.models[qj.model_ref] <= 0:
            del tenant.models[qj.model_ref]
        self._order.on_leave(qj, served=served)

    def _start_running(self, job: Job, tenant_id: str, model_ref: str, worker_id: str) -> None:
        self._running[job.job_id] = _Running(worker_id, tenant_id, model_ref, job)
        on = self._running_on.setdefault(worker_id, set())
        on.add(job.job_id)
        tenant = self._tenant(tenant_id)
        tenant.running += 1
        self._update_parking(tenant)
        worker = self._workers.get(worker_id)
        if worker is not None:
            self._seq += 1
            worker.own_active = len(on)
            worker.current_job_id = job.job_id

    def _group_head(self, mq: _ModelQueue, group: _Group, cls: int) -> None:
        lst = group.lists[cls]
        if group.parked or not lst:
            mq.heads[cls].set(group.tenant, None)
        else:
            head = lst[0]
            mq.heads[cls].set(group.tenant, (head[0], head[1]))

    def _refresh_model(self, mq: _ModelQueue) -> None:
        m = mq.model_ref
        idx = self._free.get(m)
        free = idx is not None and (len(idx[0]) > 0 or len(idx[1]) > 0)
        live = self._live[m]
        demand = mq.unparked
        cold = demand > 0 and live == 0
        scaling = demand > live > 0
        for cls in (0, 1):
            first = mq.heads[cls].first()
            key = None if first is None else first[0]
            self._dispatchable[cls].set(m, key if free else None)
            self._cold[cls].set(m, key if cold else None)
            self._scaling[cls].set(m, key if scaling else None)

    def _promote_due(self, now: float) -> None:
        after = self._order.promote_after_s
        if after is None or not self._promo:
            return
        cutoff = now - after
        promoted = 0
        while self._promo and promoted < self.max_promotions_per_snapshot:
            queued_at, _seq, job_id = self._promo[0]
            if queued_at > cutoff:
                break
            qj = self._jobs[job_id]
            self._unlink(qj)
            qj.promoted = True
            qj.tag = self._order.tag(qj, 0)
            qj.cls = 0
            self._insert(qj)
            promoted += 1
        if promoted:
            self._version += 1

    # -- internals: fleet --------------------------------------------------------------------

    def _new_worker(self, worker_id: str, pool_id: str, model_ref: str) -> _Worker:
        ref = self._catalog.resolve(model_ref)
        worker = _Worker(worker_id, pool_id, ref)
        on = self._running_on.get(worker_id)
        if on:
            worker.own_active = len(on)
            worker.current_job_id = next(iter(on))
        self._workers[worker_id] = worker
        self._worker_models[ref] += 1
        return worker

    def _take_report(self, worker: _Worker, info: WorkerInfo) -> None:
        worker.gpu_ids = tuple(info.gpu_ids)
        worker.reported_status = WorkerStatus(info.status)
        worker.max_concurrency = info.max_concurrency
        shown = info.current_job_id
        worker.take_reported_load(
            worker.reported_status,
            info.active_jobs,
            finished_shown=shown is not None and shown in self._finished,
        )
        worker.vram_bytes = info.vram_bytes
        worker.uri = info.uri
        worker.pending = False
        worker.requested_at = None
        if info.current_job_id is not None and worker.current_job_id is None:
            worker.current_job_id = info.current_job_id
        if info.last_used_at is not None and (
            worker.last_used_at is None or info.last_used_at > worker.last_used_at
        ):
            worker.last_used_at = info.last_used_at
        worker.jobs_completed = max(worker.jobs_completed, info.jobs_completed)
        self._learn_vram(worker.model_ref, info.vram_bytes)

    def _learn_vram(self, ref: str, vram_bytes: int) -> bool:
        """Keep ``vram_bytes`` as the learned VRAM of model ``ref`` if larger than before.
        When that changes :meth:`model_vram`, the workers that reported no VRAM of their own
        count the new figure: :meth:`_recount_relearned` re-counts them on their GPUs."""
        if vram_bytes <= self._learned_vram.get(ref, 0):
            return False
        before = self.model_vram(ref)
        self._learned_vram[ref] = vram_bytes
        if self.model_vram(ref) != before:
            self._relearned.add(ref)
        return True

    def _recount_relearned(self) -> None:
        """Re-count the GPU shares of workers without a VRAM figure of their own whose
        model's learned VRAM rose. O(W), only when a learned figure rises (it never falls,
        so this happens a few times per model at most)."""
        if not self._relearned:
            return
        refs, self._relearned = self._relearned, set()
        for worker in [w for w in self._workers.values() if w.model_ref in refs]:
            if worker.vram_bytes <= 0:
                self._refresh_worker(worker)

    def _attach_pool(self, rec: _Pool) -> None:
        for wid in rec.workers:
            worker = self._workers[wid]
            for gid in worker.gpu_ids:
                gpu = rec.gpus.get(gid)
                if gpu is not None:
                    gpu.workers.add(wid)
        for gpu in rec.gpus.values():
            self._group_gpu(gpu, rec)
        for wid in rec.workers:
            self._refresh_worker(self._workers[wid])

    def _forget_worker(self, worker: _Worker) -> None:
        self._refresh_worker(worker, present=False)
        rec = self._pools.get(worker.pool_id)
        if rec is not None:
            rec.workers.discard(worker.worker_id)
            for gid in worker.gpu_ids:
                gpu = rec.gpus.get(gid)
                if gpu is not None:
                    gpu.workers.discard(worker.worker_id)
        if self._workers.get(worker.worker_id) is worker:
            del self._workers[worker.worker_id]
            self._worker_models[worker.model_ref] -= 1

    def _vram(self, worker: _Worker) -> int:
        return worker.vram_bytes if worker.vram_bytes > 0 else self.model_vram(worker.model_ref)

    def _share(self, worker: _Worker) -> int:
        return vram_share(self._vram(worker), len(worker.gpu_ids))

    def _free_index(self, model_ref: str) -> tuple[_KeyedIndex[Any], _KeyedIndex[Any]]:
        idx = self._free.get(model_ref)
        if idx is None:
            idx = self._free[model_ref] = (_KeyedIndex(), _KeyedIndex())
        return idx

    def _gpu_free_of(self, worker: _Worker) -> int:
        rec = self._pools.get(worker.pool_id)
        if rec is None:
            return 0
        total = 0
        for gid in worker.gpu_ids:
            gpu = rec.gpus.get(gid)
            if gpu is not None:
                total += gpu.free()
        return total

    def _placement_key(self, worker: _Worker, active: int) -> Any:
        return self._placement.key(
            active / worker.max_concurrency,
            self._gpu_free_of(worker),
            worker.last_dispatch,
            worker.worker_id,
        )

    def _refresh_worker(self, worker: _Worker, *, present: bool = True) -> None:
        """Recompute a worker's contributions to every index and sum."""
        rec = self._pools.get(worker.pool_id)
        pool_status = PoolStatus.OFFLINE if rec is None else rec.status
        usable = present and pool_status is not PoolStatus.OFFLINE
        status = worker.status() if present else None
        active = worker.active() if present else 0
        live = worker.max_concurrency if usable and status in _LIVE else 0
        free = usable and status is WorkerStatus.READY and active < worker.max_concurrency
        idle = (
            usable
            and status is WorkerStatus.READY
            and active == 0
            and not worker.pending
            and worker.own_active == 0
        )
        drain = usable and status in (WorkerStatus.READY, WorkerStatus.BUSY) and not worker.pending
        alloc = present and not worker.stopping
        share = self._share(worker) if present else 0
        model = worker.model_ref
        old_model = worker.c_model
        # counters
        if worker.c_status is not None:
            self._status_counts[worker.c_status] -= 1
        if status is not None:
            self._status_counts[status] += 1
        worker.c_status = status
        live_changed = live != worker.c_live or model != old_model
        if live_changed:
            self._live[old_model] -= worker.c_live
            self._live[model] += live
            worker.c_live = live
        # GPU sums
        if rec is not None:
            rec.version += 1  # invalidates the pool's cached Rhai ctx map
        if (
            alloc != worker.c_alloc
            or idle != worker.c_idle
            or drain != worker.c_drain
            or share != worker.c_share
        ):
            gpus = [] if rec is None else [rec.gpus.get(g) for g in worker.gpu_ids]
            old = worker.c_share
            for gpu in gpus:
                if gpu is None:
                    continue
                gpu.allocated += (share if alloc else 0) - (old if worker.c_alloc else 0)
                gpu.idle += (share if idle else 0) - (old if worker.c_idle else 0)
                gpu.live += (share if drain else 0) - (old if worker.c_drain else 0)
            worker.c_alloc, worker.c_idle, worker.c_drain = alloc, idle, drain
            worker.c_share = share
            for gpu in gpus:
                if gpu is not None:
                    self._reindex_gpu(gpu)
        # free-worker index
        slot = (_ONLINE if pool_status is PoolStatus.ONLINE else _DEGRADED) if free else None
        free_before = None
        if worker.c_slot is not None or slot is not None:
            old_idx = self._free_index(old_model)
            free_before = len(old_idx[0]) + len(old_idx[1]) > 0
            if worker.c_slot is not None and (worker.c_slot != slot or model != old_model):
                old_idx[worker.c_slot].set(worker.worker_id, None)
            if slot is not None:
                self._free_index(model)[slot].set(
                    worker.worker_id, self._placement_key(worker, active)
                )
            worker.c_slot = slot
        worker.c_model = model
        free_after = None
        if free_before is not None:
            idx = self._free_index(old_model)
            free_after = len(idx[0]) + len(idx[1]) > 0
        for m in {model, old_model}:
            mq = self._models.get(m)
            if mq is not None and (live_changed or free_before != free_after or m != old_model):
                self._refresh_model(mq)

    def _group_gpu(self, gpu: _Gpu, rec: _Pool) -> None:
        key = (rec.status, rec.models)
        group = self._gpu_groups.get(key)
        if group is None:
            group = self._gpu_groups[key] = _GpuGroup(rec.status, rec.models)
            self._groups_cache.clear()
        gpu.c_group = group
        gpu.c_free = gpu.free()
        gpu.c_reclaim = gpu.free_after(gpu.idle)
        gpu.c_drainable = gpu.free_after(gpu.live)
        group.free_idx.add((gpu.c_free, gpu.pool_id, gpu.gpu_id))
        group.reclaim_idx.add((gpu.c_reclaim, gpu.pool_id, gpu.gpu_id))
        group.drain_idx.add((gpu.c_drainable, gpu.pool_id, gpu.gpu_id))
        group.totals.add(gpu.total)

    def _ungroup_gpu(self, gpu: _Gpu) -> None:
        group = gpu.c_group
        if group is None:
            return
        group.free_idx.remove((gpu.c_free, gpu.pool_id, gpu.gpu_id))
        group.reclaim_idx.remove((gpu.c_reclaim, gpu.pool_id, gpu.gpu_id))
        group.drain_idx.remove((gpu.c_drainable, gpu.pool_id, gpu.gpu_id))
        group.totals.remove(gpu.total)
        gpu.c_group = None
        if not group.totals:
            del self._gpu_groups[group.key]
            self._groups_cache.clear()

    def _reindex_gpu(self, gpu: _Gpu) -> None:
        group = gpu.c_group
        if group is None:
            return
        free = gpu.free()
        reclaim = gpu.free_after(gpu.idle)
        if reclaim != gpu.c_reclaim:
            group.reclaim_idx.remove((gpu.c_reclaim, gpu.pool_id, gpu.gpu_id))
            group.reclaim_idx.add((reclaim, gpu.pool_id, gpu.gpu_id))
            gpu.c_reclaim = reclaim
        drainable = gpu.free_after(gpu.live)
        if drainable != gpu.c_drainable:
            group.drain_idx.remove((gpu.c_drainable, gpu.pool_id, gpu.gpu_id))
            group.drain_idx.add((drainable, gpu.pool_id, gpu.gpu_id))
            gpu.c_drainable = drainable
        if free != gpu.c_free:
            group.free_idx.remove((gpu.c_free, gpu.pool_id, gpu.gpu_id))
            group.free_idx.add((free, gpu.pool_id, gpu.gpu_id))
            gpu.c_free = free
            # placements that look at free VRAM re-key the free workers on this GPU
            for wid in gpu.workers:
                worker = self._workers.get(wid)
                if worker is not None and worker.c_slot is not None:
                    self._free_index(worker.model_ref)[worker.c_slot].set(
                        wid, self._placement_key(worker, worker.active())
                    )

    def _gpu_groups_for(self, model_ref: str, status: PoolStatus) -> list[_GpuGroup]:
        key = (model_ref, status)
        groups = self._groups_cache.get(key)
        if groups is None:
            groups = [
                g for g in self._gpu_groups.values() if g.status is status and g.can_load(model_ref)
            ]
            self._groups_cache[key] = groups
        return groups

    def could_ever_fit(self, model_ref: str) -> bool | None:
        """Whether some registered pool (in any status) could host a worker of this model:
        it can load the model and has a GPU with enough total VRAM. ``None`` when no pool
        with GPUs is registered at all (nothing can be concluded yet)."""
        if not self._gpu_groups:
            return None
        ref = self._catalog.resolve(model_ref)
        need = self.model_vram(ref)
        for group in self._gpu_groups.values():
            if group.can_load(ref) and group.totals and group.totals[-1] >= need:
                return True
        return False

    def pools_by_status(self) -> dict[str, int]:
        """Pools by status. O(pools)."""
        counts = Counter(str(p.status) for p in self._pools.values())
        return {str(s): counts[str(s)] for s in PoolStatus}

    def iter_pools(self) -> Iterator[_Pool]:
        """Pool records (internal; for the snapshot's ctx builder)."""
        return iter(self._pools.values())

    def self_check(self) -> Sequence[str]:
        """Recompute the main counters from the records and list every difference (empty
        when consistent). O(everything): for tests and debugging, never in a decision."""
        problems: list[str] = []
        live: Counter[str] = Counter()
        for w in self._workers.values():
            rec = self._pools.get(w.pool_id)
            usable = rec is not None and rec.status is not PoolStatus.OFFLINE
            if usable and w.status() in _LIVE:
                live[w.model_ref] += w.max_concurrency
            free = usable and w.status() is WorkerStatus.READY
            slot = w.c_slot
            if free != (slot is not None):
                problems.append(f"worker {w.worker_id}: free={free} but slot={slot}")
        for m in set(live) | set(self._live):
            if live[m] != self._live[m]:
                problems.append(f"model {m}: live {self._live[m]} != {live[m]}")
        for rec in self._pools.values():
            for gpu in rec.gpus.values():
                alloc = sum(
                    self._share(self._workers[w])
                    for w in gpu.workers
                    if w in self._workers and not self._workers[w].stopping
                )
                if alloc != gpu.allocated:
                    problems.append(f"gpu {rec.pool_id}/{gpu.gpu_id}: {gpu.allocated} != {alloc}")
                usable = rec.status is not PoolStatus.OFFLINE
                on = [self._workers[w] for w in gpu.workers if w in self._workers]
                idle = sum(
                    self._share(w)
                    for w in on
                    if usable
                    and w.status() is WorkerStatus.READY
                    and w.active() == 0
                    and not w.pending
                    and w.own_active == 0
                )
                live_vram = sum(
                    self._share(w)
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
        for m, mq in self._models.items():
            n = sum(g.size() for g in mq.groups.values())
            if n != mq.queued:
                problems.append(f"model {m}: queued {mq.queued} != {n}")
        return problems
