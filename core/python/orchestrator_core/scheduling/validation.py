"""Checking a decision against a snapshot before the daemon executes it.

:func:`validate_decision` returns every :class:`Refusal` (empty list = valid). A batch is
checked as a sequence: each action is judged in the world the earlier *accepted* actions of
the batch leave behind — two dispatches to one single-slot worker, a start that needs VRAM
an earlier start took, or a dispatch to a worker evicted earlier are refused, while a start
that uses VRAM an earlier eviction of the batch frees is accepted.

The daemon runs this on every decision that does not come from the built-in scheduler (a
Rhai policy's), and on built-in decisions in tests. A refused decision is not executed; the
daemon falls back to the built-in policy and counts the refusal.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrator_core.pools import PoolStatus, WorkerStatus
from orchestrator_core.scheduling.decisions import (
    REJECT_CODES,
    Batch,
    Decision,
    Dispatch,
    EvictWorker,
    Reject,
    StartWorker,
    iter_actions,
)
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot
from orchestrator_core.scheduling.views import WorkerView, vram_share

__all__ = ["Refusal", "RefusalCode", "validate_decision"]


class RefusalCode(StrEnum):
    """Why an action was refused. Stable: metrics and scripts' tests match on them."""

    UNKNOWN_JOB = "unknown_job"
    JOB_NOT_QUEUED = "job_not_queued"
    DUPLICATE_JOB = "duplicate_job"
    UNKNOWN_WORKER = "unknown_worker"
    UNKNOWN_POOL = "unknown_pool"
    UNKNOWN_GPU = "unknown_gpu"
    UNKNOWN_MODEL = "unknown_model"
    POOL_MISMATCH = "pool_mismatch"
    POOL_OFFLINE = "pool_offline"
    WORKER_NOT_READY = "worker_not_ready"
    WORKER_FULL = "worker_full"
    WORKER_EVICTED = "worker_evicted"
    MODEL_MISMATCH = "model_mismatch"
    MODEL_NOT_LOADABLE = "model_not_loadable"
    INSUFFICIENT_VRAM = "insufficient_vram"
    EVICT_BUSY_WORKER = "evict_busy_worker"
    OVER_QUOTA = "over_quota"
    CODE_NOT_ALLOWED = "code_not_allowed"


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused action: a stable ``code``, a message naming the ids involved, the index
    of the action in a batch (``None`` for a single action) and the field at fault."""

    code: RefusalCode
    message: str
    action_index: int | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for logs and API responses."""
        return {
            "code": str(self.code),
            "message": self.message,
            "action_index": self.action_index,
            "field": self.field,
        }


class _Checker:
    """Accumulates the effects of accepted actions while walking a batch."""

    def __init__(self, snapshot: SchedulingSnapshot, batched: bool) -> None:
        self.snap = snapshot
        self.batched = batched
        self.jobs_used: set[str] = set()
        self.slots_used: Counter[str] = Counter()
        self.evicted: set[str] = set()
        self.vram_freed: Counter[tuple[str, str]] = Counter()  # by evictions of the batch
        self.vram_reserved: Counter[tuple[str, str]] = Counter()  # by starts of the batch
        self.tenant_started: Counter[str] = Counter()
        self.out: list[Refusal] = []
        self.index: int | None = None

    def refuse(self, code: RefusalCode, message: str, field: str) -> None:
        where = f"actions[{self.index}].{field}" if self.batched else field
        prefix = f"actions[{self.index}]: " if self.batched else ""
        self.out.append(Refusal(code, prefix + message, self.index, where))

    def _queued_job(self, job_id: str) -> bool:
        if job_id in self.jobs_used:
            self.refuse(RefusalCode.DUPLICATE_JOB, f"job {job_id} is already used", "job_id")
            return False
        if self.snap.job(job_id) is None:
            if self.snap.is_running(job_id):
                self.refuse(RefusalCode.JOB_NOT_QUEUED, f"job {job_id} is running", "job_id")
            else:
                self.refuse(RefusalCode.UNKNOWN_JOB, f"no queued job {job_id}", "job_id")
            return False
        return True

    def _named_worker(self, worker_id: str, pool_id: str | None) -> tuple[WorkerView | None, bool]:
        """The worker an action names (``None``, refused, when unknown) and whether it is on
        the pool the action names, if it names one (refused when not)."""
        worker = self.snap.worker(worker_id)
        if worker is None:
            self.refuse(RefusalCode.UNKNOWN_WORKER, f"no worker {worker_id}", "worker_id")
            return None, False
        if pool_id is not None and pool_id != worker.pool_id:
            self.refuse(
                RefusalCode.POOL_MISMATCH,
                f"worker {worker.worker_id} belongs to pool {worker.pool_id}, not {pool_id}",
                "pool_id",
            )
            return worker, False
        return worker, True

    def dispatch(self, act: Dispatch) -> None:
        ok = self._queued_job(act.job_id)
        worker, same_pool = self._named_worker(act.worker_id, act.pool_id)
        if worker is None:
            return
        ok = ok and same_pool
        pool = self.snap.pool(worker.pool_id)
        if pool is None or pool.status is PoolStatus.OFFLINE:
            self.refuse(
                RefusalCode.POOL_OFFLINE,
                f"pool {worker.pool_id} of worker {worker.worker_id} is offline",
                "worker_id",
            )
            return
        if worker.worker_id in self.evicted:
            self.refuse(
                RefusalCode.WORKER_EVICTED,
                f"worker {worker.worker_id} is evicted earlier in this batch",
                "worker_id",
            )
            return
        if worker.status is not WorkerStatus.READY:
            self.refuse(
                RefusalCode.WORKER_NOT_READY,
                f"worker {worker.worker_id} is {worker.status}",
                "worker_id",
            )
            return
        used = self.slots_used[worker.worker_id]
        if worker.free_slots - used <= 0:
            self.refuse(
                RefusalCode.WORKER_FULL,
                f"worker {worker.worker_id} has no free slot left ({worker.max_concurrency}"
                f" slots, {worker.active_jobs} active, {used} dispatched in this batch)",
                "worker_id",
            )
            return
        if not ok:
            return
        job = self.snap.job(act.job_id)
        assert job is not None
        if job.model_ref != worker.model_ref:
            self.refuse(
                RefusalCode.MODEL_MISMATCH,
                f"job {job.job_id} needs model {job.model_ref} but worker"
                f" {worker.worker_id} serves {worker.model_ref}",
                "worker_id",
            )
            return
        tenant = self.snap.tenant(job.tenant_key)
        started = self.tenant_started[job.tenant_key]
        if (
            self.snap.enforce_quotas
            and tenant.max_running is not None
            and tenant.running + started >= tenant.max_running
        ):
            self.refuse(
                RefusalCode.OVER_QUOTA,
                f"tenant {job.tenant_key!r} is at its quota of {tenant.max_running} running jobs",
                "job_id",
            )
            return
        self.jobs_used.add(job.job_id)
        self.slots_used[worker.worker_id] += 1
        self.tenant_started[job.tenant_key] += 1

    def start(self, act: StartWorker) -> None:
        pool = self.snap.pool(act.pool_id)
        if pool is None:
            self.refuse(RefusalCode.UNKNOWN_POOL, f"no pool {act.pool_id}", "pool_id")
            return
        if pool.status is PoolStatus.OFFLINE:
            self.refuse(RefusalCode.POOL_OFFLINE, f"pool {act.pool_id} is offline", "pool_id")
            return
        gpu = self.snap.gpu(act.pool_id, act.gpu_id)
        if gpu is None:
            self.refuse(
                RefusalCode.UNKNOWN_GPU, f"pool {act.pool_id} has no GPU {act.gpu_id}", "gpu_id"
            )
            return
        ref = self.snap.resolve_model(act.model_ref)
        if not self.snap.model_known(ref):
            self.refuse(RefusalCode.UNKNOWN_MODEL, f"unknown model {act.model_ref}", "model_ref")
            return
        if not self.snap.pool_can_load(act.pool_id, ref):
            self.refuse(
                RefusalCode.MODEL_NOT_LOADABLE,
                f"pool {act.pool_id} cannot load model {ref}",
                "model_ref",
            )
            return
        need = self.snap.model_vram(ref)
        key = (act.pool_id, act.gpu_id)
        free = gpu.free_after(freed=self.vram_freed[key], reserved=self.vram_reserved[key])
        if need > free:
            self.refuse(
                RefusalCode.INSUFFICIENT_VRAM,
                f"model {ref} needs {need} bytes but GPU {act.pool_id}/{act.gpu_id} has"
                f" {free} free",
                "gpu_id",
            )
            return
        self.vram_reserved[key] += need

    def evict(self, act: EvictWorker) -> None:
        worker, same_pool = self._named_worker(act.worker_id, act.pool_id)
        if worker is None or not same_pool:
            return
        if worker.worker_id in self.evicted:
            self.refuse(
                RefusalCode.WORKER_EVICTED,
                f"worker {worker.worker_id} is already evicted in this batch",
                "worker_id",
            )
            return
        busy = (
            worker.active_jobs > 0
            or worker.status is WorkerStatus.BUSY
            or self.slots_used[worker.worker_id] > 0
        )
        if busy:
            self.refuse(
                RefusalCode.EVICT_BUSY_WORKER,
                f"worker {worker.worker_id} is busy ({worker.active_jobs} active jobs); drain it"
                " instead of evicting it",
                "worker_id",
            )
            return
        self.evicted.add(worker.worker_id)
        if not worker.stopping:  # a stopping worker's VRAM already counts as free
            share = vram_share(worker.vram_bytes, len(worker.gpu_ids))
            for gid in worker.gpu_ids:
                self.vram_freed[(worker.pool_id, gid)] += share

    def reject(self, act: Reject) -> None:
        if not self._queued_job(act.job_id):
            return
        if act.code not in REJECT_CODES:
            self.refuse(
                RefusalCode.CODE_NOT_ALLOWED,
                f"a scheduler may not fail a job with {act.code}",
                "code",
            )
            return
        self.jobs_used.add(act.job_id)


def validate_decision(decision: Decision, snapshot: SchedulingSnapshot) -> list[Refusal]:
    """Every reason to refuse ``decision`` in ``snapshot`` (empty list: execute it).

    Checks: unknown job, worker, pool, GPU or model ids; a job that is not queued or is used
    twice; a worker of another pool than named; an offline pool; a worker that is busy,
    starting, draining, failed or out of free slots (counting earlier dispatches of the
    batch); a job and worker with different models; a tenant at its running quota; a start
    on a pool that cannot load the model or on a GPU without enough free VRAM (counting
    earlier starts and evictions of the batch, per GPU as the built-in scheduler counts them:
    :func:`~orchestrator_core.scheduling.views.placeable_vram`, each evicted worker freeing
    its :func:`~orchestrator_core.scheduling.views.vram_share` on each of its GPUs); evicting
    a busy worker; a reject code a
    scheduler may not use (see :data:`REJECT_CODES`).
    """
    batched = isinstance(decision, Batch)
    checker = _Checker(snapshot, batched)
    for i, act in enumerate(iter_actions(decision)):
        checker.index = i if batched else None
        if isinstance(act, Dispatch):
            checker.dispatch(act)
        elif isinstance(act, StartWorker):
            checker.start(act)
        elif isinstance(act, EvictWorker):
            checker.evict(act)
        elif isinstance(act, Reject):
            checker.reject(act)
    return checker.out
