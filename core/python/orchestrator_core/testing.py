"""Fluent builders for tests: jobs, pools with GPUs and workers, whole clusters and snapshots.

Shared by every part's tests so that a scheduling scenario reads like its description::

    from orchestrator_core.testing import cluster

    state = (
        cluster()
        .model("llama", vram_gb=8)
        .pool("p1").gpu("g0", vram_gb=24).worker("w1", "llama")      # on g0, 8 GB, ready
        .job("j1", "llama", priority="batch", tenant="acme")
        .build()
    )
    decision = scheduler.schedule(state.snapshot(now=100.0))

Conventions: VRAM in gigabytes (``GB`` = 10**9 bytes); times in Unix seconds; a worker goes
on the last GPU declared unless ``gpu=`` says otherwise; a GPU's free VRAM defaults to its
total minus its workers' VRAM; jobs get increasing ``queued_at`` (1, 2, 3, ...) unless given.
Builders only produce the library's own types (Job, PoolInfo, WorkerInfo, GpuInfo,
ClusterState): no fakes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Self

from orchestrator_core.jobs import Job, JobParams, Priority
from orchestrator_core.pools import GpuInfo, PoolInfo, PoolStatus, WorkerInfo, WorkerStatus
from orchestrator_core.scheduling.catalog import ModelCatalog, ModelInfo
from orchestrator_core.scheduling.ordering import QueueOrder
from orchestrator_core.scheduling.placement import Placement
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot
from orchestrator_core.scheduling.state import ClusterState, TenantQuota

__all__ = [
    "GB",
    "ClusterBuilder",
    "cluster",
    "gb",
    "make_gpu",
    "make_job",
    "make_pool",
    "make_worker",
]

GB = 1_000_000_000
"""One gigabyte in bytes (decimal, as GPU vendors count)."""


def gb(value: float) -> int:
    """``value`` gigabytes in bytes."""
    return round(value * GB)


def make_job(
    job_id: str,
    model_ref: str = "model-a",
    *,
    priority: Priority | str = Priority.INTERACTIVE,
    tenant: str | None = None,
    session: str | None = None,
    queued_at: float = 0.0,
    max_tokens: int = 16,
    seed: int | None = None,
) -> Job:
    """A queued job (prompt ``"hello"``)."""
    return Job(
        job_id=job_id,
        model_ref=model_ref,
        prompt="hello",
        params=JobParams(max_tokens=max_tokens, seed=seed),
        priority=Priority(priority),
        tenant_id=tenant,
        session_id=session,
        created_at=queued_at,
        queued_at=queued_at,
    )


def make_gpu(gpu_id: str, *, vram_gb: float = 24, free_gb: float | None = None) -> GpuInfo:
    """A GPU; free VRAM defaults to all of it."""
    total = gb(vram_gb)
    return GpuInfo(
        gpu_id=gpu_id,
        name=f"gpu-{gpu_id}",
        vram_total_bytes=total,
        vram_free_bytes=total if free_gb is None else min(total, gb(free_gb)),
    )


def make_worker(
    worker_id: str,
    model_ref: str,
    *,
    gpus: Iterable[str] = ("g0",),
    status: WorkerStatus | str = WorkerStatus.READY,
    vram_gb: float = 0,
    active: int = 0,
    slots: int = 1,
    last_used_at: float | None = None,
    jobs_completed: int = 0,
) -> WorkerInfo:
    """A worker as a pool reports it."""
    return WorkerInfo(
        worker_id=worker_id,
        model_ref=model_ref,
        gpu_ids=list(gpus),
        status=WorkerStatus(status),
        uri=f"http://{worker_id}.test:9000",
        vram_bytes=gb(vram_gb),
        active_jobs=active,
        max_concurrency=slots,
        last_used_at=last_used_at,
        jobs_completed=jobs_completed,
    )


def make_pool(
    pool_id: str,
    *,
    gpus: Iterable[GpuInfo] = (),
    workers: Iterable[WorkerInfo] = (),
    status: PoolStatus | str = PoolStatus.ONLINE,
    models: Iterable[str] = (),
    heartbeat_at: float = 0.0,
) -> PoolInfo:
    """A pool view as the registry returns it."""
    return PoolInfo(
        pool_id=pool_id,
        endpoint=f"http://{pool_id}.test:8000",
        status=PoolStatus(status),
        capabilities=["text-gen"],
        gpus=list(gpus),
        workers=list(workers),
        models=list(models),
        registered_at=0.0,
        last_heartbeat=heartbeat_at,
    )


@dataclass
class _PoolSpec:
    pool_id: str
    status: PoolStatus
    models: list[str]
    gpus: list[tuple[str, float, float | None]] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)


class ClusterBuilder:
    """Builds a :class:`ClusterState` step by step (see the module docstring)."""

    def __init__(
        self,
        *,
        order: QueueOrder | None = None,
        placement: Placement | None = None,
        enforce_quotas: bool = False,
        quota_action: Literal["wait", "reject"] = "wait",
    ) -> None:
        self._order = order
        self._placement = placement
        self._enforce = enforce_quotas
        self._quota_action: Literal["wait", "reject"] = quota_action
        self._models: list[ModelInfo] = []
        self._tenants: list[TenantQuota] = []
        self._pools: list[_PoolSpec] = []
        self._jobs: list[Job] = []
        self._clock = itertools.count(1)
        self._calls: list[str] = [
            f"cluster(order={order!r}, placement={placement!r}, enforce_quotas={enforce_quotas},"
            f" quota_action={quota_action!r})"
        ]

    def _log(self, name: str, *args: object, **kwargs: object) -> None:
        parts = [repr(a) for a in args]
        parts += [f"{k}={v!r}" for k, v in kwargs.items()]
        self._calls.append(f".{name}({', '.join(parts)})")

    def __repr__(self) -> str:
        """The builder calls that made this cluster, one per line (readable in test failures)."""
        return "\n".join(self._calls)

    def model(self, model_ref: str, *, vram_gb: float = 0, aliases: Iterable[str] = ()) -> Self:
        """Add a catalog entry."""
        self._log("model", model_ref, vram_gb=vram_gb, aliases=list(aliases))
        self._models.append(ModelInfo(model_ref, tuple(aliases), gb(vram_gb)))
        return self

    def tenant(
        self,
        tenant_id: str,
        *,
        weight: float = 1.0,
        max_running: int | None = None,
        max_queued: int | None = None,
    ) -> Self:
        """Add a tenant with a weight and quotas."""
        self._log("tenant", tenant_id, weight=weight, max_running=max_running)
        self._tenants.append(TenantQuota(tenant_id, weight, max_queued, max_running))
        return self

    def pool(
        self,
        pool_id: str,
        *,
        status: PoolStatus | str = PoolStatus.ONLINE,
        models: Iterable[str] = (),
    ) -> Self:
        """Start a pool; following ``gpu``/``worker`` calls add to it."""
        self._log("pool", pool_id, status=str(status), models=list(models))
        self._pools.append(_PoolSpec(pool_id, PoolStatus(status), list(models)))
        return self

    def gpu(self, gpu_id: str, *, vram_gb: float = 24, free_gb: float | None = None) -> Self:
        """Add a GPU to the current pool (free VRAM: total minus its workers by default)."""
        self._log("gpu", gpu_id, vram_gb=vram_gb, free_gb=free_gb)
        self._current().gpus.append((gpu_id, vram_gb, free_gb))
        return self

    def worker(
        self,
        worker_id: str,
        model_ref: str,
        *,
        gpu: str | Iterable[str] | None = None,
        status: WorkerStatus | str = WorkerStatus.READY,
        vram_gb: float | None = None,
        active: int = 0,
        slots: int = 1,
        last_used_at: float | None = None,
        jobs_completed: int = 0,
    ) -> Self:
        """Add a worker to the current pool, on ``gpu`` (default: the last GPU added); its
        VRAM defaults to the catalog's figure for the model."""
        spec = self._current()
        if gpu is None:
            gpus = [spec.gpus[-1][0]] if spec.gpus else []
        elif isinstance(gpu, str):
            gpus = [gpu]
        else:
            gpus = list(gpu)
        if vram_gb is None:
            known = {m.model_ref: m.vram_bytes for m in self._models}
            vram_gb = known.get(model_ref, 0) / GB
        self._log(
            "worker",
            worker_id,
            model_ref,
            gpu=gpus,
            status=str(status),
            vram_gb=vram_gb,
            active=active,
            slots=slots,
            last_used_at=last_used_at,
        )
        spec.workers.append(
            make_worker(
                worker_id,
                model_ref,
                gpus=gpus,
                status=status,
                vram_gb=vram_gb,
                active=active,
                slots=slots,
                last_used_at=last_used_at,
                jobs_completed=jobs_completed,
            )
        )
        return self

    def job(
        self,
        job_id: str,
        model_ref: str,
        *,
        priority: Priority | str = Priority.INTERACTIVE,
        tenant: str | None = None,
        session: str | None = None,
        queued_at: float | None = None,
    ) -> Self:
        """Queue a job (``queued_at`` defaults to the next tick: 1, 2, 3, ...)."""
        at = float(next(self._clock)) if queued_at is None else queued_at
        self._log("job", job_id, model_ref, priority=str(priority), tenant=tenant, queued_at=at)
        self._jobs.append(
            make_job(
                job_id, model_ref, priority=priority, tenant=tenant, session=session, queued_at=at
            )
        )
        return self

    def jobs(
        self,
        count: int,
        model_ref: str,
        *,
        prefix: str = "j",
        priority: Priority | str = Priority.INTERACTIVE,
        tenant: str | None = None,
    ) -> Self:
        """Queue ``count`` jobs named ``<prefix>0``, ``<prefix>1``, ..."""
        for i in range(count):
            self.job(f"{prefix}{i}", model_ref, priority=priority, tenant=tenant)
        return self

    def _current(self) -> _PoolSpec:
        if not self._pools:
            raise ValueError("call .pool(...) before adding GPUs or workers")
        return self._pools[-1]

    def pool_infos(self) -> list[PoolInfo]:
        """The pools as :class:`PoolInfo` values (as a registry would hand them over)."""
        out = []
        for spec in self._pools:
            workers = [w.model_copy() for w in spec.workers]
            gpus = []
            for gpu_id, vram_gb, given_free in spec.gpus:
                used = sum(w.vram_bytes // len(w.gpu_ids) for w in workers if gpu_id in w.gpu_ids)
                free_gb = max(0.0, vram_gb - used / GB) if given_free is None else given_free
                gpus.append(make_gpu(gpu_id, vram_gb=vram_gb, free_gb=free_gb))
            out.append(
                make_pool(
                    spec.pool_id, gpus=gpus, workers=workers, status=spec.status, models=spec.models
                )
            )
        return out

    def build(self) -> ClusterState:
        """The cluster state with every pool upserted and every job added."""
        state = ClusterState(
            order=self._order,
            placement=self._placement,
            catalog=ModelCatalog(self._models),
            tenants=self._tenants,
            enforce_quotas=self._enforce,
            quota_action=self._quota_action,
        )
        for info in self.pool_infos():
            state.upsert_pool(info)
        for job in self._jobs:
            state.add_job(job)
        return state

    def snapshot(self, now: float = 1000.0) -> SchedulingSnapshot:
        """``build().snapshot(now)``."""
        return self.build().snapshot(now)


def cluster(
    *,
    order: QueueOrder | None = None,
    placement: Placement | None = None,
    enforce_quotas: bool = False,
    quota_action: Literal["wait", "reject"] = "wait",
) -> ClusterBuilder:
    """A new :class:`ClusterBuilder`."""
    return ClusterBuilder(
        order=order, placement=placement, enforce_quotas=enforce_quotas, quota_action=quota_action
    )
