"""FleetIndex: the pools, GPUs and workers — as reported, and as the orchestrator changed
them since (dispatches, finishes, starts and stops it asked for).

It applies every fleet event to the records (pool reports, worker state changes, requested
starts and stops, jobs starting and ending on a worker) and has the
:class:`~orchestrator_core.scheduling.fleet_counts.FleetCounts` re-count what changed.
Worker status is the pool's report corrected by the orchestrator's own actions: a job
dispatched a moment ago makes a single-slot worker busy before any heartbeat says so, and a
finished job frees it before the next heartbeat. A worker's load is the jobs the state
knows run there (:class:`~orchestrator_core.scheduling.running.RunningJobs`) plus whatever
the last report showed beyond them, so a report can make a worker busier until the next
one, never freer than the known jobs allow.
"""

from __future__ import annotations

import itertools

from orchestrator_core.pools import PoolInfo, PoolStatus, WorkerInfo, WorkerStatus
from orchestrator_core.scheduling.fleet_counts import FleetCounts
from orchestrator_core.scheduling.model_index import ModelIndex
from orchestrator_core.scheduling.placement import Placement
from orchestrator_core.scheduling.records import GpuRecord, PoolRecord, WorkerRecord
from orchestrator_core.scheduling.running import RunningJobs

__all__ = ["PENDING_PREFIX", "FleetIndex"]

PENDING_PREFIX = "~pending-"
"""Ids of placeholder workers (a start requested, no worker id yet). ``~`` never appears in
a real worker id, so placeholders cannot collide with workers pools report."""


class FleetIndex:
    """Pools, GPUs, workers and their indexes (see the module docstring). Per-worker changes
    are O(log n); per-pool ones O(workers and GPUs of that pool · log n)."""

    def __init__(
        self,
        models: ModelIndex,
        placement: Placement,
        running: RunningJobs,
        *,
        pending_start_ttl_s: float,
    ) -> None:
        self.models = models
        self.running = running
        self.pending_start_ttl_s = pending_start_ttl_s
        self.pools: dict[str, PoolRecord] = {}
        """Pool records by id (read-only outside this class)."""
        self.workers: dict[str, WorkerRecord] = {}
        """Worker records by id (read-only outside this class)."""
        self.counts = FleetCounts(models, placement, self.pools, self.workers)
        """What the records add up to: live slots, GPUs, free workers."""
        self.dispatch_seq = 0
        """Dispatch sequence number (a worker's ``last_dispatch``, for round-robin)."""
        self._pending_seq = itertools.count(1)

    # -- pools -----------------------------------------------------------------------------

    def upsert_pool(self, pool: PoolInfo) -> None:
        """Take a pool's status, GPUs and workers as reported. Workers it no longer reports
        are forgotten, except requested starts no heartbeat has shown yet (kept up to
        ``pending_start_ttl_s`` by the pool's heartbeat clock)."""
        rec = self.pools.get(pool.pool_id)
        if rec is None:
            rec = self.pools[pool.pool_id] = PoolRecord(pool.pool_id)
        old_workers = self._detach(rec)
        self._take_pool_report(rec, pool)
        reported = self._take_worker_reports(rec, pool.workers)
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
            self.workers.pop(worker.worker_id, None)
            self.models.worker_models[worker.model_ref] -= 1
        rec.workers = {w for w in rec.workers if w in self.workers} | reported
        self._attach(rec)
        self._recount_relearned()

    def _detach(self, rec: PoolRecord) -> list[WorkerRecord]:
        """Take a pool's models, workers and GPUs out of the counts; returns its workers."""
        for m in rec.models:
            self.models.pool_models[m] -= 1
        workers = [self.workers[w] for w in rec.workers]
        for w in workers:
            self.counts.refresh(w, present=False)
        for gpu in rec.gpus.values():
            self.counts.gpus.remove(gpu)
        return workers

    def _attach(self, rec: PoolRecord) -> None:
        """Count a pool's GPUs and workers again (after :meth:`_detach` and a change)."""
        for wid in rec.workers:
            worker = self.workers[wid]
            for gid in worker.gpu_ids:
                gpu = rec.gpus.get(gid)
                if gpu is not None:
                    gpu.workers.add(wid)
        for gpu in rec.gpus.values():
            self.counts.gpus.add(gpu, rec.status, rec.models)
        for wid in rec.workers:
            self.counts.refresh(self.workers[wid])

    def _take_pool_report(self, rec: PoolRecord, pool: PoolInfo) -> None:
        resolve = self.models.resolve
        rec.endpoint = pool.endpoint
        rec.status = PoolStatus(pool.status)
        rec.capabilities = tuple(pool.capabilities)
        rec.reported_models = tuple(pool.models)
        rec.models = frozenset(resolve(m) for m in pool.models)
        for m in rec.models:
            self.models.pool_models[m] += 1
        for m, vram in pool.model_vram_bytes.items():  # what the pool's launch configs need
            self.models.learn(resolve(m), vram)
        rec.registered_at = pool.registered_at
        rec.last_heartbeat = pool.last_heartbeat
        rec.version += 1
        gpus: dict[str, GpuRecord] = {}
        for info in pool.gpus:
            gpu = rec.gpus.get(info.gpu_id) or GpuRecord(rec.pool_id, info.gpu_id)
            gpu.name = info.name
            gpu.total = info.vram_total_bytes
            gpu.reported_free = info.vram_free_bytes
            gpu.utilization = info.utilization
            gpu.released = 0
            gpu.workers = set()
            gpus[info.gpu_id] = gpu
        rec.gpus = gpus

    def _take_worker_reports(self, rec: PoolRecord, infos: list[WorkerInfo]) -> set[str]:
        reported: set[str] = set()
        for winfo in infos:
            reported.add(winfo.worker_id)
            worker = self.workers.get(winfo.worker_id)
            if worker is not None and worker.pool_id != rec.pool_id:
                self._forget(worker)  # it moved to this pool
                worker = None
            if worker is None or worker.model_ref != self.models.resolve(winfo.model_ref):
                if worker is not None:
                    self.models.worker_models[worker.model_ref] -= 1
                worker = self._new_worker(winfo.worker_id, rec.pool_id, winfo.model_ref)
            self._take_report(worker, winfo)
        return reported

    def remove_pool(self, pool_id: str) -> bool:
        """Forget a pool, its GPUs and workers; ``False`` if unknown."""
        rec = self.pools.pop(pool_id, None)
        if rec is None:
            return False
        for wid in list(rec.workers):
            self._forget(self.workers[wid])
        for gpu in rec.gpus.values():
            self.counts.gpus.remove(gpu)
        for m in rec.models:
            self.models.pool_models[m] -= 1
        return True

    def set_pool_status(self, rec: PoolRecord, status: PoolStatus) -> None:
        """Give a pool a new status: its GPUs and workers are counted again."""
        workers = [self.workers[w] for w in rec.workers]
        for w in workers:
            self.counts.refresh(w, present=False)
        for gpu in rec.gpus.values():
            self.counts.gpus.remove(gpu)
        rec.status = status
        rec.version += 1
        self._attach(rec)

    # -- workers ---------------------------------------------------------------------------

    def mark_worker(self, worker: WorkerRecord, status: WorkerStatus) -> None:
        """A worker changed state outside a heartbeat."""
        worker.reported_status = status
        if status is WorkerStatus.READY:
            worker.unknown_active = 0
        elif status is WorkerStatus.BUSY:
            worker.take_reported_load(WorkerStatus.BUSY, 0)
        self.counts.refresh(worker)

    def start_requested(
        self,
        rec: PoolRecord,
        gpu_id: str,
        model_ref: str,
        *,
        now: float,
        vram_bytes: int | None,
        max_concurrency: int,
    ) -> str:
        """Count a placeholder worker for a requested start; returns its id."""
        wid = f"{PENDING_PREFIX}{next(self._pending_seq)}"
        worker = self._new_worker(wid, rec.pool_id, model_ref)
        worker.gpu_ids = (gpu_id,)
        worker.reported_status = WorkerStatus.STARTING
        worker.vram_bytes = vram_bytes if vram_bytes is not None else self.models.vram(model_ref)
        worker.max_concurrency = max_concurrency
        worker.pending = True
        worker.requested_at = now
        rec.workers.add(wid)
        if gpu_id in rec.gpus:
            rec.gpus[gpu_id].workers.add(wid)
        self.counts.refresh(worker)
        return wid

    def start_confirmed(self, worker: WorkerRecord, worker_id: str) -> None:
        """A placeholder got its real id (it stays a pending start until a heartbeat)."""
        if worker_id in self.workers:
            self._forget(worker)  # a heartbeat already reported the real worker
            return
        placeholder_id = worker.worker_id
        self.counts.refresh(worker, present=False)
        rec = self.pools[worker.pool_id]
        rec.workers.discard(placeholder_id)
        rec.workers.add(worker_id)
        for gid in worker.gpu_ids:
            gpu = rec.gpus.get(gid)
            if gpu is not None:
                gpu.workers.discard(placeholder_id)
                gpu.workers.add(worker_id)
        del self.workers[placeholder_id]
        worker.worker_id = worker_id
        self.workers[worker_id] = worker
        self.counts.refresh(worker)

    def stop_requested(self, worker: WorkerRecord) -> bool:
        """A worker was asked to stop: no more jobs, its VRAM counts as released. ``False``
        if it was already stopping."""
        if worker.stopping:
            return False
        rec = self.pools[worker.pool_id]
        worker.stopping = True
        self.counts.refresh(worker)
        for gid in worker.gpu_ids:
            gpu = rec.gpus.get(gid)
            if gpu is not None:
                gpu.released += self.counts.share(worker)
                self.counts.rekey_gpu(gpu)
        return True

    def remove_worker(self, worker: WorkerRecord) -> None:
        """A worker is gone."""
        self._forget(worker)

    def job_started(self, worker_id: str, job_id: str, *, dispatched: bool) -> None:
        """``job_id`` (already in the running jobs) occupies a slot of ``worker_id``;
        ``dispatched``: sent now (it counts for round-robin), not restored."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        self.dispatch_seq += 1
        worker.own_active = len(self.running.on_worker(worker_id))
        worker.current_job_id = job_id
        if dispatched:
            worker.last_dispatch = self.dispatch_seq
        self.counts.refresh(worker)

    def job_finished(self, worker_id: str, *, now: float) -> None:
        """A job of ``worker_id`` ended (already out of the running jobs)."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        on = self.running.on_worker(worker_id)
        worker.own_active = len(on)
        worker.current_job_id = next(iter(on)) if on else None
        worker.last_used_at = now
        worker.jobs_completed += 1
        self.counts.refresh(worker)

    def learn_vram(self, model_ref: str, vram_bytes: int) -> bool:
        """Learn a model's VRAM outside a report; returns whether the figure rose."""
        if not self.models.learn(self.models.resolve(model_ref), vram_bytes):
            return False
        self._recount_relearned()
        return True

    def _new_worker(self, worker_id: str, pool_id: str, model_ref: str) -> WorkerRecord:
        ref = self.models.resolve(model_ref)
        worker = WorkerRecord(worker_id, pool_id, ref)
        on = self.running.on_worker(worker_id)
        if on:
            worker.own_active = len(on)
            worker.current_job_id = next(iter(on))
        self.workers[worker_id] = worker
        self.models.worker_models[ref] += 1
        return worker

    def _take_report(self, worker: WorkerRecord, info: WorkerInfo) -> None:
        worker.gpu_ids = tuple(info.gpu_ids)
        worker.reported_status = WorkerStatus(info.status)
        worker.max_concurrency = info.max_concurrency
        shown = info.current_job_id
        worker.take_reported_load(
            worker.reported_status,
            info.active_jobs,
            finished_shown=shown is not None and self.running.recently_finished(shown),
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
        self.models.learn(worker.model_ref, info.vram_bytes)

    def _recount_relearned(self) -> None:
        """Re-count the GPU shares of workers without a VRAM figure of their own whose
        model's learned VRAM rose. O(W), only when a learned figure rises (it never falls,
        so this happens a few times per model at most)."""
        refs = self.models.take_relearned()
        if not refs:
            return
        for worker in [w for w in self.workers.values() if w.model_ref in refs]:
            if worker.vram_bytes <= 0:
                self.counts.refresh(worker)

    def _forget(self, worker: WorkerRecord) -> None:
        self.counts.refresh(worker, present=False)
        rec = self.pools.get(worker.pool_id)
        if rec is not None:
            rec.workers.discard(worker.worker_id)
            for gid in worker.gpu_ids:
                gpu = rec.gpus.get(gid)
                if gpu is not None:
                    gpu.workers.discard(worker.worker_id)
        if self.workers.get(worker.worker_id) is worker:
            del self.workers[worker.worker_id]
            self.models.worker_models[worker.model_ref] -= 1
