"""Read-only views of the cluster that schedulers, validators and policies look at.

:class:`QueuedJob` is the record the cluster state keeps for each queued job (plugins such as
queue orders receive it; treat it as read-only). The other views are frozen copies made on
request by :class:`~orchestrator_core.scheduling.snapshot.SchedulingSnapshot`.

VRAM is counted per GPU by two rules that the cluster state, the built-in scheduler's
planners and :func:`~orchestrator_core.scheduling.validation.validate_decision` all call
(the Rhai twin of the built-in policy mirrors them): :func:`vram_share` (a worker on several
GPUs holds an equal share on each) and :func:`placeable_vram` (what a start may use on a GPU
once some workers stop and other starts took their part).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator_core.jobs import Job, Priority
from orchestrator_core.pools import PoolStatus, WorkerStatus

__all__ = [
    "GpuView",
    "PoolView",
    "QueuedJob",
    "TenantView",
    "WorkerView",
    "placeable_vram",
    "vram_share",
]


def vram_share(vram_bytes: int, gpu_count: int) -> int:
    """The VRAM a worker of ``vram_bytes`` holds on each of its ``gpu_count`` GPUs: an equal
    share, rounded down (0 for a worker on no GPU)."""
    return vram_bytes // gpu_count if gpu_count > 0 else 0


def placeable_vram(
    free: int, total: int, allocated: int, *, freed: int = 0, reserved: int = 0
) -> int:
    """VRAM a start may use on a GPU once workers holding ``freed`` bytes of it stop and
    starts taking ``reserved`` bytes of it are placed (both: earlier actions of the same
    decision).

    ``free``, ``total`` and ``allocated`` are the GPU's as a :class:`GpuView` shows them.
    ``free`` is never negative, but the shares of the workers on a GPU can exceed its size
    (a pool reporting a worker on two GPUs whose VRAM is not split evenly, or larger than
    one GPU): such a GPU is over-committed by ``allocated - total``, which stopping workers
    pays back before anything fits, so no eviction makes a GPU hold more than its size.
    Without ``reserved`` this is the free VRAM the cluster state shows once those workers
    are asked to stop; a reserved start is taken off it.
    """
    headroom = free if allocated <= total else total - allocated
    return max(0, headroom + freed - reserved)


class QueuedJob:
    """A queued job as the cluster state indexes it. Read-only for everyone but the state.

    ``model_ref`` is the canonical model (aliases resolved); ``seq`` is the arrival number in
    the state; ``cls`` is the order class (0 = interactive or promoted batch, 1 = batch);
    ``tag`` is the order's sort tag within the class (jobs run by ``(tag, seq)``).
    """

    __slots__ = (
        "cls",
        "created_at",
        "job",
        "job_id",
        "model_ref",
        "priority",
        "promoted",
        "queued_at",
        "seq",
        "session_id",
        "tag",
        "tenant_id",
    )

    def __init__(self, job: Job, model_ref: str, seq: int) -> None:
        self.job = job
        self.job_id = job.job_id
        self.model_ref = model_ref
        self.priority = job.priority
        self.tenant_id = job.tenant_id
        self.session_id = job.session_id
        self.queued_at = job.queued_at
        self.created_at = job.created_at
        self.seq = seq
        self.cls = 0
        self.tag = 0.0
        self.promoted = False

    @property
    def key(self) -> tuple[float, int]:
        """Sort key within the class: ``(tag, seq)``."""
        return (self.tag, self.seq)

    @property
    def tenant_key(self) -> str:
        """The tenant id, or ``""`` for jobs without one."""
        return self.tenant_id or ""

    @property
    def class_name(self) -> str:
        """``interactive``, ``promoted`` (an aged batch job) or ``batch``."""
        if self.promoted:
            return "promoted"
        return "interactive" if self.priority is Priority.INTERACTIVE else "batch"

    def __repr__(self) -> str:
        return f"QueuedJob({self.job_id!r}, {self.model_ref!r}, {self.class_name}, key={self.key})"


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the scheduler sees it.

    ``status`` is the *effective* status: the pool's report corrected by what the
    orchestrator itself did since (a job dispatched a moment ago makes a single-slot worker
    busy before the next heartbeat says so). ``pending`` marks a worker the orchestrator
    asked a pool to start and that no heartbeat has confirmed yet; ``stopping`` one it asked
    to stop.
    """

    worker_id: str
    pool_id: str
    model_ref: str
    gpu_ids: tuple[str, ...]
    status: WorkerStatus
    reported_status: WorkerStatus
    active_jobs: int
    max_concurrency: int
    free_slots: int
    vram_bytes: int
    uri: str
    current_job_id: str | None
    last_used_at: float | None
    jobs_completed: int
    pending: bool
    stopping: bool


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU. ``vram_free_bytes`` is what the scheduler may still place on it: the pool's
    measurement, lowered by workers started since and raised by workers stopped since."""

    pool_id: str
    gpu_id: str
    name: str
    vram_total_bytes: int
    vram_free_bytes: int
    vram_reported_free_bytes: int
    vram_allocated_bytes: int
    utilization: float
    worker_ids: tuple[str, ...]

    def free_after(self, *, freed: int = 0, reserved: int = 0) -> int:
        """VRAM a start may use here once workers holding ``freed`` bytes of this GPU stop
        and starts take ``reserved`` bytes of it (see :func:`placeable_vram`)."""
        return placeable_vram(
            self.vram_free_bytes,
            self.vram_total_bytes,
            self.vram_allocated_bytes,
            freed=freed,
            reserved=reserved,
        )


@dataclass(frozen=True, slots=True)
class PoolView:
    """One pool: status, what it can load, its GPUs and workers (by id)."""

    pool_id: str
    endpoint: str
    status: PoolStatus
    capabilities: tuple[str, ...]
    models: tuple[str, ...]
    gpu_ids: tuple[str, ...]
    worker_ids: tuple[str, ...]
    registered_at: float
    last_heartbeat: float


@dataclass(frozen=True, slots=True)
class TenantView:
    """A tenant's weight, quotas (``None`` = unlimited) and current usage."""

    tenant_id: str
    weight: float
    max_queued: int | None
    max_running: int | None
    queued: int
    running: int

    @property
    def at_running_quota(self) -> bool:
        """True when the tenant may not start another job now."""
        return self.max_running is not None and self.running >= self.max_running
