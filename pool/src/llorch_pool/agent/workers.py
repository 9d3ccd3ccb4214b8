"""The pool's workers: starting, watching and stopping engines, with VRAM accounting.

Lifecycle of a worker the pool starts::

    start_worker ──> starting ──(health path answers 200)──> ready <──> busy
                        │                                      │
                        ├─(process exits / not ready in time)──┴─(process exits,
                        v                                          health fails 3×)──> failed
    stop_worker ──> draining ──(engine stopped)──> gone (forgotten; a repeated stop is a no-op)

VRAM is reserved when the worker is accepted (so two starts cannot both take the last
gigabytes) and released when it stops or its engine dies. ``busy`` comes from the engine's
own ``/health`` report (native workers report ``active_jobs``); OpenAI engines answering 503
after they were ready are reported busy too (llama.cpp does so when every slot is taken).
Static workers (engines the pool did not start) are probed the same way, go ``failed`` while
unreachable and come back ``ready``; the pool never stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from orchestrator_core.errors import ErrorCode, FieldError, RequestInvalid
from orchestrator_core.pools import GpuInfo, WorkerInfo, WorkerStatus

from llorch_pool.agent.gpus import DetectedGpu
from llorch_pool.agent.launcher import EngineHandle, EngineLauncher, LaunchSpec, ModelSpec
from llorch_pool.agent.vram import VramLedger
from llorch_pool.errors import ModelIncompatible, WorkerNotFound, WorkerStateInvalid
from llorch_pool.protocol import WorkerProtocol

__all__ = ["GpuSpec", "ManagedWorker", "StaticWorker", "WorkerManager"]

log = logging.getLogger("llorch_pool.agent.workers")

HEALTH_FAILURES_TO_FAIL = 3
"""Consecutive failed health probes after which a ready worker is declared failed."""

_STOPPED_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """A GPU of the pool: id, name, capacity, and its CUDA index when it is a real one."""

    gpu_id: str
    name: str
    vram_total_bytes: int
    cuda_device: str | None = None


@dataclass(frozen=True, slots=True)
class StaticWorker:
    """An engine that already runs; the pool reports it but neither starts nor stops it."""

    worker_id: str
    model_ref: str
    uri: str
    protocol: WorkerProtocol
    health_path: str
    gpu_id: str | None = None
    vram_bytes: int = 0
    max_concurrency: int = 1


@dataclass(eq=False)
class ManagedWorker:
    """One worker as the pool tracks it."""

    worker_id: str
    model_ref: str
    gpu_ids: list[str]
    vram_bytes: int
    protocol: WorkerProtocol
    health_path: str
    max_concurrency: int
    static: bool = False
    status: WorkerStatus = WorkerStatus.STARTING
    uri: str = ""
    handle: EngineHandle | None = None
    failure: str | None = None
    created_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    failed_at: float | None = None
    stopping: bool = False
    health_failures: int = 0
    active_jobs: int = 0
    current_job_id: str | None = None
    jobs_completed: int = 0
    last_used_at: float | None = None
    task: asyncio.Task[None] | None = None

    def info(self) -> WorkerInfo:
        """The core :class:`WorkerInfo` reported to the orchestrator."""
        return WorkerInfo(
            worker_id=self.worker_id,
            model_ref=self.model_ref,
            gpu_ids=list(self.gpu_ids),
            status=self.status,
            uri=self.uri,
            vram_bytes=self.vram_bytes,
            current_job_id=self.current_job_id,
            active_jobs=self.active_jobs,
            max_concurrency=self.max_concurrency,
            last_used_at=self.last_used_at,
            jobs_completed=self.jobs_completed,
            protocol="openai" if self.protocol == "openai" else "llorch",
        )


GpuProbe = Callable[[], Awaitable[list[DetectedGpu] | None]]


class WorkerManager:
    """Starts, watches and stops the workers of one pool.

    ``changed`` is set whenever a worker's reported state changes, so the heartbeat loop can
    tell the orchestrator at once instead of at the next interval.
    """

    def __init__(
        self,
        *,
        pool_id: str,
        gpus: Sequence[GpuSpec],
        launcher: EngineLauncher,
        http: httpx.AsyncClient,
        static_workers: Sequence[StaticWorker] = (),
        ready_timeout_s: float = 120.0,
        stop_grace_s: float = 10.0,
        health_interval_s: float = 1.0,
        failed_ttl_s: float = 600.0,
        gpu_probe: GpuProbe | None = None,
    ) -> None:
        self.pool_id = pool_id
        self.gpus = {g.gpu_id: g for g in gpus}
        self.ledger = VramLedger({g.gpu_id: g.vram_total_bytes for g in gpus})
        self.launcher = launcher
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.health_interval_s = health_interval_s
        self.failed_ttl_s = failed_ttl_s
        self.changed = asyncio.Event()
        self._http = http
        self._gpu_probe = gpu_probe
        self._utilization: dict[str, float] = {}
        self._workers: dict[str, ManagedWorker] = {}
        self._stopped: OrderedDict[str, None] = OrderedDict()
        self._static = list(static_workers)
        self._counter = 0
        self._monitor: asyncio.Task[None] | None = None

    # -- lifecycle of the manager ------------------------------------------------------

    async def start(self) -> None:
        """Register static workers and start watching worker health."""
        for s in self._static:
            worker = ManagedWorker(
                worker_id=s.worker_id,
                model_ref=s.model_ref,
                gpu_ids=[s.gpu_id] if s.gpu_id else [],
                vram_bytes=s.vram_bytes,
                protocol=s.protocol,
                health_path=s.health_path,
                max_concurrency=s.max_concurrency,
                static=True,
                uri=s.uri.rstrip("/"),
            )
            if s.gpu_id is not None and s.gpu_id in self.gpus:
                self.ledger.reserve(s.worker_id, s.model_ref, s.gpu_id, s.vram_bytes, force=True)
            self._workers[worker.worker_id] = worker
        await self.refresh()
        self._monitor = asyncio.create_task(self._monitor_loop(), name="pool-health")

    async def close(self) -> None:
        """Stop watching and stop every worker this pool started."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        ids = [w.worker_id for w in self._workers.values() if not w.static]
        await asyncio.gather(*(self.stop_worker(i) for i in ids), return_exceptions=True)

    # -- queries -----------------------------------------------------------------------

    def catalog(self) -> Mapping[str, ModelSpec]:
        """Models this pool can start."""
        return self.launcher.catalog()

    def models(self) -> list[str]:
        """Model refs the pool can serve: those it can start and those of static workers."""
        refs = set(self.catalog()) | {s.model_ref for s in self._static}
        return sorted(refs)

    def get(self, worker_id: str) -> ManagedWorker:
        """The worker ``worker_id`` (:class:`WorkerNotFound` if absent)."""
        worker = self._workers.get(worker_id)
        if worker is None:
            raise WorkerNotFound(worker_id)
        return worker

    def workers(self) -> list[ManagedWorker]:
        """All workers, oldest first."""
        return list(self._workers.values())

    def worker_infos(self) -> list[WorkerInfo]:
        """Workers as the core type."""
        return [w.info() for w in self._workers.values()]

    def protocols(self) -> dict[str, str]:
        """worker_id → protocol name (``llorch`` or ``openai``)."""
        return {w.worker_id: str(w.protocol) for w in self._workers.values()}

    def gpu_infos(self) -> list[GpuInfo]:
        """GPUs with accounted (and, where measured, observed) free VRAM."""
        infos = []
        for gpu_id, gpu in self.gpus.items():
            total = self.ledger.total(gpu_id)
            infos.append(
                GpuInfo(
                    gpu_id=gpu_id,
                    name=gpu.name,
                    vram_total_bytes=total,
                    vram_free_bytes=min(total, self.ledger.free(gpu_id)),
                    utilization=self._gpu_utilization(gpu_id),
                )
            )
        return infos

    def _gpu_utilization(self, gpu_id: str) -> float:
        if gpu_id in self._utilization:
            return self._utilization[gpu_id]
        # No measurement: the share of busy slots of the workers on this GPU.
        slots = busy = 0
        for w in self._workers.values():
            if gpu_id in w.gpu_ids and w.status in (WorkerStatus.READY, WorkerStatus.BUSY):
                slots += w.max_concurrency
                busy += min(w.active_jobs, w.max_concurrency)
        return round(busy / slots, 4) if slots else 0.0

    # -- start / stop ------------------------------------------------------------------

    def start_worker(self, model_ref: str, gpu_id: str) -> ManagedWorker:
        """Accept a start: check the model and the GPU, reserve VRAM, and launch the engine
        in the background. Returns the new worker (``starting``).

        Raises :class:`ModelIncompatible` (cannot ever run it there),
        :class:`~llorch_pool.errors.InsufficientVram` (does not fit now) and
        :class:`RequestInvalid` (unknown ``gpu_id``).
        """
        spec = self.catalog().get(model_ref)
        if spec is None:
            reason = (
                "served only by a static endpoint of this pool; it cannot start more"
                if any(s.model_ref == model_ref for s in self._static)
                else f"pool {self.pool_id} has no launch configuration for it"
            )
            raise ModelIncompatible(model_ref, reason)
        if gpu_id not in self.gpus:
            known = ", ".join(self.gpus) or "none"
            msg = f"gpu_id: pool {self.pool_id} has no GPU {gpu_id!r} (known: {known})"
            raise RequestInvalid([FieldError("gpu_id", ErrorCode.INVALID_PARAMETER, msg)])
        self._counter += 1
        worker_id = f"{self.pool_id}-w{self._counter}-{uuid.uuid4().hex[:6]}"
        self.ledger.reserve(worker_id, model_ref, gpu_id, spec.vram_bytes)
        worker = ManagedWorker(
            worker_id=worker_id,
            model_ref=model_ref,
            gpu_ids=[gpu_id],
            vram_bytes=spec.vram_bytes,
            protocol=spec.protocol,
            health_path=spec.health_path,
            max_concurrency=spec.max_concurrency,
        )
        self._workers[worker_id] = worker
        launch = LaunchSpec(worker_id, spec, gpu_id, self.gpus[gpu_id].cuda_device)
        timeout = spec.ready_timeout_s or self.ready_timeout_s
        worker.task = asyncio.create_task(self._run(worker, launch, timeout), name=worker_id)
        self.changed.set()
        log.info("worker %s: starting %s on gpu %s", worker_id, model_ref, gpu_id)
        return worker

    async def stop_worker(self, worker_id: str) -> None:
        """Stop and forget a worker. Idempotent for workers this pool already stopped;
        :class:`WorkerNotFound` for unknown ids, :class:`WorkerStateInvalid` for static ones."""
        worker = self._workers.get(worker_id)
        if worker is None:
            if worker_id in self._stopped:
                return
            raise WorkerNotFound(worker_id)
        if worker.static:
            raise WorkerStateInvalid(worker_id, "a static worker is not managed by this pool")
        if worker.stopping:
            while worker_id in self._workers:  # another stop is in progress: wait for it
                await asyncio.sleep(0.01)
            return
        worker.stopping = True
        if worker.status is not WorkerStatus.FAILED:
            worker.status = WorkerStatus.DRAINING
            self.changed.set()
        if worker.task is not None and not worker.task.done():
            worker.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.task
        if worker.handle is not None:
            try:
                await worker.handle.stop(self.stop_grace_s)
            except Exception:
                log.exception("worker %s: error while stopping its engine", worker_id)
        self.ledger.release(worker_id)
        self._forget(worker_id)
        log.info("worker %s: stopped", worker_id)

    def _forget(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)
        self._stopped[worker_id] = None
        while len(self._stopped) > _STOPPED_MEMORY:
            self._stopped.popitem(last=False)
        self.changed.set()

    def _fail(self, worker: ManagedWorker, reason: str) -> None:
        if worker.stopping or worker.status is WorkerStatus.FAILED:
            return
        log.warning("worker %s: failed: %s", worker.worker_id, reason)
        worker.status = WorkerStatus.FAILED
        worker.failure = reason
        worker.failed_at = time.time()
        worker.active_jobs = 0
        worker.current_job_id = None
        if not worker.static:
            self.ledger.release(worker.worker_id)  # a dead engine holds no VRAM
        self.changed.set()

    async def _run(self, worker: ManagedWorker, spec: LaunchSpec, timeout_s: float) -> None:
        """Launch, wait for readiness, then watch the engine until it exits."""
        launching = asyncio.ensure_future(self.launcher.launch(spec))
        try:
            handle = await asyncio.shield(launching)
        except asyncio.CancelledError:
            # Stopped while launching: let the launch finish so that nothing is leaked.
            with contextlib.suppress(Exception):
                worker.handle = await launching
            raise
        except Exception as exc:
            self._fail(worker, f"engine could not be started: {exc}")
            return
        worker.handle = handle
        worker.uri = handle.uri
        exited = asyncio.create_task(handle.wait_exit())
        try:
            ready = asyncio.create_task(self._wait_ready(worker, timeout_s))
            done, _ = await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                ready.cancel()
                self._fail(worker, exited.result())
                return
            if not ready.result():
                exited.cancel()
                self._fail(worker, f"engine not ready after {timeout_s:g}s")
                await handle.stop(self.stop_grace_s)
                return
            worker.status = WorkerStatus.READY
            worker.ready_at = time.time()
            worker.health_failures = 0
            self.changed.set()
            log.info(
                "worker %s: ready at %s after %.2fs",
                worker.worker_id,
                worker.uri,
                worker.ready_at - worker.created_at,
            )
            reason = await exited
            self._fail(worker, reason)
        finally:
            exited.cancel()

    async def _wait_ready(self, worker: ManagedWorker, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while time.monotonic() < deadline:
            try:
                response = await self._http.get(worker.uri + worker.health_path, timeout=2.0)
                if response.status_code == 200:
                    self._absorb_health(worker, response)
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)
        return False

    # -- health watching ---------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("health refresh failed")

    async def refresh(self) -> None:
        """Probe every ready/busy worker (and every static one) once, refresh GPU
        measurements, and forget workers that have been failed for longer than the TTL."""
        probes = [
            self._probe(w)
            for w in self._workers.values()
            if not w.stopping and (w.static or w.status in (WorkerStatus.READY, WorkerStatus.BUSY))
        ]
        await asyncio.gather(*probes)
        if self._gpu_probe is not None:
            await self._refresh_gpus()
        now = time.time()
        for w in list(self._workers.values()):
            if (
                not w.static
                and w.status is WorkerStatus.FAILED
                and w.failed_at is not None
                and now - w.failed_at > self.failed_ttl_s
            ):
                if w.handle is not None:
                    with contextlib.suppress(Exception):
                        await w.handle.stop(0)
                self._forget(w.worker_id)

    async def _refresh_gpus(self) -> None:
        assert self._gpu_probe is not None
        detected = await self._gpu_probe()
        if not detected:
            return
        by_index = {g.index: g for g in detected}
        for gpu in self.gpus.values():
            d = by_index.get(gpu.cuda_device or "")
            if d is None:
                continue
            self.ledger.set_measured(gpu.gpu_id, d.vram_total_bytes, d.vram_free_bytes)
            if d.utilization is not None:
                self._utilization[gpu.gpu_id] = d.utilization

    async def _probe(self, worker: ManagedWorker) -> None:
        before = (worker.status, worker.active_jobs)
        try:
            response = await self._http.get(worker.uri + worker.health_path, timeout=2.0)
        except httpx.HTTPError as exc:
            worker.health_failures += 1
            if worker.static:
                if worker.status is not WorkerStatus.FAILED and worker.health_failures >= (
                    HEALTH_FAILURES_TO_FAIL if worker.status is not WorkerStatus.STARTING else 1
                ):
                    worker.status = WorkerStatus.FAILED
                    worker.failure = f"unreachable: {exc!r}"
                    worker.failed_at = time.time()
            elif worker.health_failures >= HEALTH_FAILURES_TO_FAIL:
                self._fail(worker, f"health probe failed {worker.health_failures} times: {exc!r}")
                if worker.handle is not None:
                    await worker.handle.stop(self.stop_grace_s)
        else:
            worker.health_failures = 0
            if response.status_code == 200:
                self._absorb_health(worker, response)
            elif response.status_code == 503 and worker.status is not WorkerStatus.STARTING:
                worker.status = WorkerStatus.BUSY
            if worker.static and worker.status in (WorkerStatus.STARTING, WorkerStatus.FAILED):
                worker.status = WorkerStatus.READY if response.status_code == 200 else worker.status
                worker.failure = None
        if (worker.status, worker.active_jobs) != before:
            self.changed.set()

    def _absorb_health(self, worker: ManagedWorker, response: httpx.Response) -> None:
        """Take the load figures of a native worker's ``/health`` JSON."""
        data: Any
        try:
            data = response.json()
        except ValueError:
            data = None
        status = WorkerStatus.READY
        if isinstance(data, dict) and isinstance(data.get("active_jobs"), int):
            worker.active_jobs = max(0, data["active_jobs"])
            if isinstance(data.get("jobs_completed"), int):
                worker.jobs_completed = max(0, data["jobs_completed"])
            last = data.get("last_used_at")
            worker.last_used_at = float(last) if isinstance(last, int | float) else None
            current = data.get("current_job_id")
            worker.current_job_id = current if isinstance(current, str) else None
            if worker.active_jobs >= worker.max_concurrency:
                status = WorkerStatus.BUSY
        if worker.status in (WorkerStatus.READY, WorkerStatus.BUSY) or worker.static:
            worker.status = status
