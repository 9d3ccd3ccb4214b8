"""The orchestrator's runtime: admission, job lifecycle, dispatch and relay, pools, recovery.

:class:`Orchestrator` owns the live state (the job queue, the pool registry, the active jobs
and their SSE streams) and applies every change through the :class:`~orchestratord.store.
Store` first: an event reaches a client only after it is committed, and a job is admitted
(202) only after its row is durably committed.

Life of a job::

    submit ─► pending (committing) ─► queued (eligible) ─► running on a worker ─► end|error
                                        ▲      │                │
                                        └──────┘ backoff ◄──────┘ fault before the 1st token

* **Admission** (:meth:`Orchestrator.submit`): parse, resolve the model (catalog or pools),
  check the context (prompt tokens estimated as UTF-8 bytes / 4, rounded up, plus
  ``max_tokens``), the tenant's quota, the queue's capacity and full policy; then one durable
  commit of the job row and its ``queued`` event.
* **Dispatch** (:meth:`Orchestrator.dispatch`) checks that the decision still fits reality
  (job queued, pool not offline, worker ready with a free slot, same model) and starts a relay
  task that streams the worker's events to the job's SSE stream.
* **Faults** before the first token are retried with exponential backoff and jitter
  (``[retry]``); after it the job fails with WORKER_FAILED.
* **Stops** — cancel, timeout, client gone — tell the worker at once, wait up to
  ``timeout.cancel_deadline_s`` for it to confirm, then end the job regardless.
* **Recovery** (:meth:`Orchestrator.recover`) at start re-queues jobs in admission order; a
  job found running is re-queued if no token had been relayed and attempts remain, else
  failed with WORKER_FAILED.

Exactly one terminal event per job: :meth:`Orchestrator._finish` is the only way to end a
job, runs under the job's lock and refuses a second end; stores refuse a second terminal
event as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator_core import (
    ErrorCode,
    InMemoryJobQueue,
    InMemoryPoolRegistry,
    Job,
    JobError,
    JobNotFound,
    JobStatus,
    JobStatusResponse,
    ModelNotFound,
    OrchestratorConfig,
    OrchestratorError,
    PoolHeartbeat,
    PoolInfo,
    PoolRegistration,
    PoolStatus,
    Priority,
    RequestInvalid,
    TaskSubmitRequest,
    TaskSubmitResponse,
    WorkerInfo,
    WorkerStatus,
)
from orchestrator_core.errors import FieldError
from orchestrator_core.queues import UNBOUNDED
from orchestrator_core.scheduling import build_queue_order

from orchestratord.auth import Principal
from orchestratord.logs import log
from orchestratord.metrics import Metrics
from orchestratord.pool_agents import PoolAgentClient, PoolRequestFailed
from orchestratord.store import JobFilter, JobRow, Store, StoredEvent
from orchestratord.streams import JobStream
from orchestratord.workers import (
    ExecuteRequest,
    WorkerClient,
    WorkerError,
    WorkerLost,
    WorkerUnreachable,
)

__all__ = ["ActiveJob", "Clock", "JobList", "Orchestrator", "estimate_prompt_tokens"]

Clock = Callable[[], float]

_TRANSIENT_WORKER_CODES = frozenset(
    {
        "WORKER_FAILED",
        "DISPATCH_FAILED",
        "POOL_UNAVAILABLE",
        "NO_CAPACITY",
        "INTERNAL",
        "CANCELLED",  # a worker stopped under us (eviction, drain) — not the client's cancel
    }
)

_RECENT_STREAMS = 512
_MAX_INFLIGHT = 256


def estimate_prompt_tokens(prompt: str) -> int:
    """Estimated token count of ``prompt``: UTF-8 bytes / 4, rounded up (≈ 4 bytes per token
    for English text with common tokenizers; conservative for most other text)."""
    return math.ceil(len(prompt.encode("utf-8")) / 4)


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


class ClusterListener:
    """What the runtime tells the scheduling side about each change (no-op by default).

    The scheduling loop implements it to keep its indexed cluster state in step; every
    call happens on the event loop."""

    def job_queued(self, job: Job) -> None:
        """A job became eligible for dispatch (admitted, recovered, retry due)."""

    def job_unqueued(self, job_id: str) -> None:
        """A queued job left without running (cancelled, expired, dropped, rejected)."""

    def job_dispatched(self, job_id: str, worker_id: str, now: float) -> None:
        """A queued job was sent to a worker."""

    def job_released(self, job_id: str, now: float) -> None:
        """A dispatched job no longer occupies its worker (any outcome)."""

    def pool_updated(self, pool: PoolInfo) -> None:
        """A pool registered or sent a heartbeat."""

    def pool_removed(self, pool_id: str) -> None:
        """A pool unregistered."""

    def pool_status(self, pool_id: str, status: PoolStatus) -> None:
        """The registry derived a new status for a pool."""

    def worker_failed(self, worker_id: str) -> None:
        """A worker could not be reached or died mid-job: take no more jobs there until a
        heartbeat reports it again."""

    def model_vram_learned(self, model_ref: str, vram_bytes: int) -> None:
        """A pool told how much VRAM a worker of ``model_ref`` needs (in a refusal)."""

    def changed(self) -> None:
        """Something scheduling-relevant changed: run a pass soon."""

    def explain(self, job_id: str) -> dict[str, Any] | None:
        """Why a queued job is waiting, if the policy can tell."""
        return None


@dataclass(eq=False)
class ActiveJob:
    """A job the runtime is handling (not yet finished), with its stream and timers."""

    row: JobRow
    stream: JobStream
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: bool = True
    """Admission commit not done yet: not visible to the scheduler."""
    in_backoff: bool = False
    started_sent: bool = False
    terminal_sent: bool = False
    stopping: str | None = None
    """Why the job is being stopped (cancel, timeout, client_gone), once it is."""
    relay: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    deadline_handle: asyncio.TimerHandle | None = None
    retry_handle: asyncio.TimerHandle | None = None
    grace_handle: asyncio.TimerHandle | None = None
    had_subscriber: bool = False
    explanation: dict[str, Any] | None = None
    late_terminal: StoredEvent | None = None
    """Terminal event of a job dropped while its own admission was still committing."""
    last_reserved: int = 0
    """Highest event id handed out (published, or committing in ``inflight``)."""
    inflight: deque[tuple[asyncio.Future[None], StoredEvent]] = field(default_factory=deque)
    """Events being committed, in id order; each is published once it and all before it are
    committed."""
    closing: bool = False
    """The job is ending: no more non-terminal events."""
    write_failed: bool = False

    def __post_init__(self) -> None:
        self.last_reserved = max(self.last_reserved, self.stream.last_id)

    @property
    def job(self) -> Job:
        """The core job."""
        return self.row.job

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self.row.job.job_id

    @property
    def eligible(self) -> bool:
        """May the scheduler dispatch this job now?"""
        return (
            not self.pending
            and not self.in_backoff
            and self.stopping is None
            and self.job.status is JobStatus.QUEUED
        )


@dataclass(frozen=True, slots=True)
class JobList:
    """A page of ``GET /v2/tasks``."""

    items: list[JobStatusResponse]
    next_cursor: str | None


class Orchestrator:
    """The live orchestrator (see the module docstring). Create, ``await start()``, serve,
    ``await stop()``. Everything runs on one event loop; policy calls run in a thread."""

    def __init__(
        self,
        config: OrchestratorConfig,
        *,
        store: Store,
        worker_client: WorkerClient,
        pool_client: PoolAgentClient,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.worker_client = worker_client
        self.pool_client = pool_client
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.rng = rng or random.Random()
        self.queue = InMemoryJobQueue(
            config.queue.capacity,
            full_policy=config.queue.full_policy,
            order=build_queue_order(config),  # the scheduler's order: positions match dispatch
            clock=clock,
            retry_after_s=config.queue.retry_after_s,
        )
        self.registry = InMemoryPoolRegistry(
            heartbeat_interval_s=config.heartbeat.interval_s,
            missed_threshold=config.heartbeat.missed_threshold,
            max_clock_skew_s=config.heartbeat.max_clock_skew_s,
            clock=clock,
        )
        self.catalog = config.model_catalog()
        self.tenants = {t.tenant_id: t for t in config.tenants}
        self.active: dict[str, ActiveJob] = {}
        self.recent: OrderedDict[str, ActiveJob] = OrderedDict()
        self.load: dict[tuple[str, str], set[str]] = {}
        """(pool_id, worker_id) -> ids of the jobs the daemon runs there."""
        self.pool_tokens: dict[str, str] = {}
        """pool_id -> fingerprint of the token it registered with."""
        self.queued_by_tenant: dict[str, int] = {}
        self.ready = False
        self.started_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None
        self.listener = ClusterListener()
        """Told about every change (the scheduling loop replaces it)."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, recover unfinished jobs, start the timers."""
        await self.store.open()
        await self.recover()
        self.started_at = self.clock()
        self._spawn(self._sweep_loop(), name="pool-sweep")
        self._spawn(self._purge_loop(), name="result-purge")
        self.ready = True

    async def stop(self) -> None:
        """Stop serving: relays are cut (their jobs stay running in the store, so the next
        start recovers them), background tasks end, the store is closed."""
        self.ready = False
        for task in list(self._tasks):
            task.cancel()
        for a in list(self.active.values()):
            for handle in (a.deadline_handle, a.retry_handle, a.grace_handle):
                if handle is not None:
                    handle.cancel()
            if a.relay is not None:
                a.relay.cancel()
        relays = [a.relay for a in self.active.values() if a.relay is not None]
        await asyncio.gather(*self._tasks, *relays, return_exceptions=True)
        await self.store.close()
        await self.worker_client.aclose()
        await self.pool_client.aclose()

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _changed(self) -> None:
        self._update_queue_gauges()
        self.listener.changed()

    def _update_queue_gauges(self) -> None:
        self.metrics.queue_depth.labels("interactive").set(self.queue.depth(Priority.INTERACTIVE))
        self.metrics.queue_depth.labels("batch").set(self.queue.depth(Priority.BATCH))

    # -- recovery --------------------------------------------------------------------------

    async def recover(self) -> None:
        """Restore unfinished jobs after a restart (SYSTEM.md §5)."""
        rows = await self.store.unfinished_jobs()
        requeued = failed = 0
        now = self.clock()
        for row in rows:
            events = await self.store.events_after(row.job.job_id, 0)
            a = ActiveJob(row=row, stream=JobStream(row.job.job_id, events))
            a.started_sent = any(e.kind == "started" for e in events)
            row.tokens = sum(1 for e in events if e.kind == "token")
            self.active[a.job_id] = a
            job = row.job
            if job.status is JobStatus.RUNNING:
                old_uri, cid = row.worker_uri, row.correlation_id
                if old_uri:
                    self._spawn(self._tell_worker_cancel(old_uri, a.job_id, cid), name="cancel")
                if row.first_token_at is not None or row.tokens > 0:
                    reason = "the orchestrator restarted after tokens were relayed"
                elif job.attempts >= self.config.retry.max_attempts:
                    reason = "the orchestrator restarted and no attempts remain"
                else:
                    reason = ""
                if reason:
                    log("daemon.crash_recovery", reason, job_id=a.job_id, action="fail")
                    a.pending = False
                    await self._finish(a, JobStatus.FAILED, ErrorCode.WORKER_FAILED, reason)
                    failed += 1
                    continue
                job.requeue(now=now)
                row.worker_uri = None
                await self.store.commit(jobs=[row], durable=True)
                log("daemon.crash_recovery", "re-queued", job_id=a.job_id, action="requeue")
                requeued += 1
            self._force_enqueue(job)
            self._count_tenant(job, +1)
            a.pending = False
            self._arm_deadline(a)
            self.listener.job_queued(job)
        log(
            "daemon.recovered",
            "restart recovery done",
            queued=len(self.queue),
            requeued=requeued,
            failed=failed,
        )
        self._changed()

    def _force_enqueue(self, job: Job) -> None:
        """Enqueue past the capacity limit: a job that was already admitted (recovered or
        retried) must never be refused for room it already had."""
        capacity = self.queue.capacity
        self.queue.capacity = UNBOUNDED
        try:
            self.queue.enqueue(job)
        finally:
            self.queue.capacity = capacity

    # -- admission -------------------------------------------------------------------------

    def resolve_model(self, name: str) -> tuple[str, int | None]:
        """``(model_ref, context_length)`` of a model name or alias known to the catalog or
        reported by a pool that is not offline; :class:`ModelNotFound` otherwise."""
        entry = self.catalog.get(name)
        if entry is not None:
            return entry.model_ref, entry.context_length
        for pool in self.registry.list():
            if pool.status is PoolStatus.OFFLINE:
                continue
            if name in pool.models or any(w.model_ref == name for w in pool.workers):
                return name, None
        raise ModelNotFound(name)

    async def submit(
        self, req: TaskSubmitRequest, *, principal: Principal, correlation_id: str
    ) -> TaskSubmitResponse:
        """Admit a validated request (see the module docstring); returns after the durable
        commit. Raises :class:`OrchestratorError` with a stable code on refusal."""
        t0 = time.perf_counter()
        try:
            response = await self._admit(req, principal, correlation_id)
        except OrchestratorError as err:
            self.metrics.tasks_rejected.labels(str(err.code)).inc()
            log("job.rejected", err.message, code=str(err.code), level=logging.DEBUG)
            raise
        self.metrics.admission_latency.observe(time.perf_counter() - t0)
        return response

    async def _admit(
        self, req: TaskSubmitRequest, principal: Principal, correlation_id: str
    ) -> TaskSubmitResponse:
        if not self.ready:
            raise OrchestratorError("the orchestrator is starting", code=ErrorCode.POOL_UNAVAILABLE)
        model_ref, context = self.resolve_model(req.model)
        if context is not None:
            needed = estimate_prompt_tokens(req.prompt) + req.max_tokens
            if needed > context:
                raise OrchestratorError(
                    f"prompt (~{needed - req.max_tokens} tokens) + max_tokens ({req.max_tokens})"
                    f" exceeds the context of {model_ref} ({context} tokens)",
                    code=ErrorCode.CONTEXT_TOO_LARGE,
                    details={"model": model_ref, "context_length": context, "needed": needed},
                )
        timeout_s = self.config.timeout.default_s if req.timeout_s is None else req.timeout_s
        if timeout_s > self.config.timeout.max_s:
            raise RequestInvalid(
                [
                    FieldError(
                        "timeout_s",
                        ErrorCode.INVALID_PARAMETER,
                        f"timeout_s: must be <= {self.config.timeout.max_s}, got {timeout_s}",
                    )
                ]
            )
        tenant = principal.tenant
        self._check_quota(tenant)
        now = self.clock()
        job = Job.from_request(req, now=now, tenant_id=tenant)
        job.model_ref = model_ref
        row = JobRow(job=job, timeout_s=float(timeout_s), correlation_id=correlation_id)
        result = self.queue.enqueue(job)  # may raise QueueFull
        a = ActiveJob(row=row, stream=JobStream(job.job_id), last_reserved=1)  # 1: queued
        self.active[job.job_id] = a
        self._count_tenant(job, +1)
        queued = StoredEvent(
            job.job_id,
            1,
            "queued",
            _dumps({"job_id": job.job_id, "queue_position": result.position, "model": model_ref}),
        )
        rows, events = [row], [queued]
        dropped = self.active.get(result.dropped.job_id) if result.dropped else None
        if dropped is not None:
            self._count_tenant(dropped.job, -1)
            rows.append(dropped.row)
            events.append(self._terminal_event(dropped))
        try:
            await self.store.commit(jobs=rows, events=events, durable=True)
        except Exception:
            with contextlib.suppress(JobNotFound):
                self.queue.remove(job.job_id)
            self.active.pop(job.job_id, None)
            self._count_tenant(job, -1)
            log("http.error", "admission commit failed", level=logging.ERROR, exc_info=True)
            raise OrchestratorError("could not store the job", code=ErrorCode.INTERNAL) from None
        a.stream.publish(queued)
        a.pending = False
        if a.late_terminal is not None:  # dropped by a later admission meanwhile
            a.stream.publish(a.late_terminal)
            return TaskSubmitResponse(
                job_id=job.job_id, queue_position=0, events_url=f"/v2/tasks/{job.job_id}/events"
            )
        if dropped is not None:
            dropped.terminal_sent = True
            if dropped.pending:  # its own admission publishes ``queued``, then this
                dropped.late_terminal = events[-1]
            else:
                dropped.stream.publish(events[-1])
            self.metrics.tasks_dropped.inc()
            log("job.dropped", "dropped by drop-oldest-batch", job_id=dropped.job_id)
            self.listener.job_unqueued(dropped.job_id)
            self._cleanup(dropped)
        self._arm_deadline(a)
        self.metrics.tasks_enqueued.labels(str(job.priority)).inc()
        log(
            "job.admitted",
            "job queued",
            job_id=job.job_id,
            model=model_ref,
            priority=str(job.priority),
            position=result.position,
        )
        self.listener.job_queued(job)
        self._changed()
        return TaskSubmitResponse(
            job_id=job.job_id,
            queue_position=self._position(job.job_id),
            events_url=f"/v2/tasks/{job.job_id}/events",
        )

    def _check_quota(self, tenant: str | None) -> None:
        if tenant is None:
            return
        cfg = self.tenants.get(tenant)
        if cfg is None or cfg.max_queued is None:
            return
        if self.queued_by_tenant.get(tenant, 0) >= cfg.max_queued:
            retry = self.config.queue.retry_after_s
            raise OrchestratorError(
                f"tenant {tenant} has {cfg.max_queued} jobs queued (its quota); retry later",
                code=ErrorCode.QUOTA_EXCEEDED,
                details={"tenant": tenant, "max_queued": cfg.max_queued, "retry_after_s": retry},
            )

    def _count_tenant(self, job: Job, delta: int) -> None:
        if job.tenant_id is not None:
            n = self.queued_by_tenant.get(job.tenant_id, 0) + delta
            self.queued_by_tenant[job.tenant_id] = max(0, n)

    def _position(self, job_id: str) -> int:
        try:
            return self.queue.position(job_id)
        except JobNotFound:
            return 0

    # -- timers ----------------------------------------------------------------------------

    def _arm_deadline(self, a: ActiveJob) -> None:
        delay = max(0.0, a.row.deadline - self.clock())
        loop = asyncio.get_running_loop()
        a.deadline_handle = loop.call_later(delay, self._deadline_due, a)

    def _deadline_due(self, a: ActiveJob) -> None:
        if not a.terminal_sent and a.stopping is None:
            self._spawn(self.stop_job(a, "timeout"), name="timeout")

    def backoff_s(self, attempts: int) -> float:
        """Delay before retry number ``attempts`` (1-based): base × multiplier^(n-1), capped,
        with ± jitter."""
        r = self.config.retry
        delay = min(r.max_delay_s, r.base_delay_s * r.multiplier ** max(0, attempts - 1))
        return max(0.0, delay * (1 + r.jitter * self.rng.uniform(-1.0, 1.0)))

    # -- events and the end of jobs --------------------------------------------------------

    async def _emit(
        self, a: ActiveJob, kind: str, data: dict[str, Any], *, row: bool = False
    ) -> bool:
        """Commit, then publish, one non-terminal event; False when the job is ending.

        Commits are pipelined: the relay goes on reading the worker while earlier events are
        being committed (the store's writer commits them in order, batched), and each event
        is published only once it — and every event before it — is committed. At most
        :data:`_MAX_INFLIGHT` events per job are in flight."""
        if a.terminal_sent or a.closing or a.write_failed:
            return False
        a.last_reserved += 1
        event = StoredEvent(a.job_id, a.last_reserved, kind, _dumps(data))
        commit = asyncio.ensure_future(
            self.store.commit(jobs=[a.row] if row else (), events=[event], durable=False)
        )
        a.inflight.append((commit, event))
        commit.add_done_callback(lambda _f: self._publish_committed(a))
        if len(a.inflight) > _MAX_INFLIGHT:
            await asyncio.wait({a.inflight[0][0]})
        return True

    def _publish_committed(self, a: ActiveJob) -> None:
        while a.inflight and a.inflight[0][0].done():
            fut, event = a.inflight.popleft()
            if fut.cancelled() or fut.exception() is not None:
                if not a.write_failed:
                    a.write_failed = True
                    log(
                        "http.error",
                        f"event commit failed: {fut.exception()!r}",
                        level=logging.ERROR,
                        job_id=a.job_id,
                    )
                    if a.relay is not None and not a.relay.done():
                        a.relay.cancel()
                    self._spawn(
                        self._finish(a, JobStatus.FAILED, ErrorCode.INTERNAL, "storage error"),
                        name="store-failed",
                    )
                continue
            if not a.write_failed and not a.terminal_sent:
                a.stream.publish(event)

    async def _drain(self, a: ActiveJob) -> None:
        """Until every in-flight event of ``a`` is committed and published."""
        while a.inflight:
            await asyncio.wait({f for f, _ in a.inflight})
            self._publish_committed(a)

    def _terminal_event(self, a: ActiveJob) -> StoredEvent:
        job = a.job
        a.last_reserved += 1
        event_id = a.last_reserved
        if job.status is JobStatus.COMPLETED:
            data: dict[str, Any] = {"job_id": a.job_id, "tokens": a.row.tokens}
            return StoredEvent(a.job_id, event_id, "end", _dumps(data))
        code = str(job.error_code or ErrorCode.INTERNAL)
        data = {"job_id": a.job_id, "code": code, "message": job.error_message or code}
        return StoredEvent(a.job_id, event_id, "error", _dumps(data))

    async def _finish(
        self,
        a: ActiveJob,
        status: JobStatus,
        code: ErrorCode | None = None,
        message: str = "",
        end_data: dict[str, Any] | None = None,
    ) -> bool:
        """End ``a`` in ``status`` with its terminal event (the only way a job ends).
        Returns False if it had already ended."""
        async with a.lock:
            if a.terminal_sent or a.job.is_terminal:
                return False
            a.closing = True
            await self._drain(a)  # the job row must not turn terminal under an older event
            if a.terminal_sent or a.job.is_terminal:
                return False
            job, now = a.job, self.clock()
            was_queued = job.status is JobStatus.QUEUED
            if was_queued and job.job_id in self.queue:
                self.queue.remove(job.job_id)
            if status is JobStatus.COMPLETED:
                job.complete(now=now)
            elif status is JobStatus.CANCELLED:
                job.cancel(now=now)
                if code is not None and code is not ErrorCode.CANCELLED:
                    job.error_code, job.error_message = code, message
                elif message:
                    job.error_message = message
            else:
                job.fail(code or ErrorCode.INTERNAL, message or "failed", now=now)
            if status is JobStatus.COMPLETED:
                data: dict[str, Any] = dict(end_data or {})
                data.update({"job_id": a.job_id, "tokens": a.row.tokens})
                a.last_reserved += 1
                event = StoredEvent(a.job_id, a.last_reserved, "end", _dumps(data))
            else:
                event = self._terminal_event(a)
            if was_queued:
                self._count_tenant(job, -1)
            try:
                await self.store.commit(jobs=[a.row], events=[event], durable=True)
            except Exception:
                log(
                    "http.error",
                    "terminal commit failed",
                    level=logging.ERROR,
                    exc_info=True,
                    job_id=a.job_id,
                )
                raise
            a.terminal_sent = True
            a.stream.publish(event, gap_ok=a.write_failed)
        self._cleanup(a)
        return True

    def _cleanup(self, a: ActiveJob) -> None:
        for handle in (a.deadline_handle, a.retry_handle, a.grace_handle):
            if handle is not None:
                handle.cancel()
        self.active.pop(a.job_id, None)
        self.listener.job_unqueued(a.job_id)
        self.recent[a.job_id] = a
        while len(self.recent) > _RECENT_STREAMS:
            self.recent.popitem(last=False)
        job = a.job
        outcome = str(job.status)
        self.metrics.jobs_finished.labels(outcome).inc()
        log(
            "job.finished",
            f"job {outcome}",
            correlation_id=a.row.correlation_id,
            job_id=a.job_id,
            status=outcome,
            code=None if job.error_code is None else str(job.error_code),
            tokens=a.row.tokens,
            attempts=job.attempts,
        )
        self._changed()

    # -- dispatch and relay ----------------------------------------------------------------

    def find_worker(self, pool_id: str, worker_id: str) -> tuple[PoolInfo, WorkerInfo] | None:
        """The pool (not offline) and worker with these ids, or ``None``."""
        try:
            pool = self.registry.get(pool_id)
        except OrchestratorError:
            return None
        if pool.status is PoolStatus.OFFLINE:
            return None
        for worker in pool.workers:
            if worker.worker_id == worker_id:
                return pool, worker
        return None

    def worker_load(self, pool_id: str, worker_id: str) -> int:
        """Jobs the daemon is running on this worker."""
        return len(self.load.get((pool_id, worker_id), ()))

    def dispatch(self, job_id: str, pool_id: str, worker_id: str) -> str | None:
        """Start ``job_id`` on the worker, or return why the decision no longer fits reality
        (the caller logs and drops it)."""
        a = self.active.get(job_id)
        if a is None or not a.eligible or job_id not in self.queue:
            return "job is not queued"
        found = self.find_worker(pool_id, worker_id)
        if found is None:
            return "worker or pool gone"
        _pool, worker = found
        if worker.status not in (WorkerStatus.READY, WorkerStatus.BUSY):
            return f"worker is {worker.status}"
        if self.worker_load(pool_id, worker_id) >= worker.max_concurrency:
            return "worker is busy"
        if self.canonical_model(worker.model_ref) != self.canonical_model(a.job.model_ref):
            return "worker serves another model"
        if not worker.uri:
            return "worker has no uri"
        now = self.clock()
        self.queue.remove(job_id)
        self._count_tenant(a.job, -1)
        a.job.start(pool_id=pool_id, worker_id=worker_id, now=now)
        a.row.worker_uri = worker.uri
        self.load.setdefault((pool_id, worker_id), set()).add(job_id)
        self.metrics.queue_wait.observe(max(0.0, now - a.job.queued_at))
        self.metrics.dispatch.labels("sent").inc()
        self.listener.job_dispatched(job_id, worker_id, now)
        log(
            "job.dispatched",
            "dispatched",
            correlation_id=a.row.correlation_id,
            job_id=job_id,
            pool_id=pool_id,
            worker_id=worker_id,
            attempt=a.job.attempts,
        )
        a.relay = asyncio.get_running_loop().create_task(
            self._relay(a, pool_id, worker, worker.uri), name=f"relay-{job_id}"
        )
        self._update_queue_gauges()
        return None

    async def _relay(self, a: ActiveJob, pool_id: str, worker: WorkerInfo, uri: str) -> None:
        worker_id = worker.worker_id
        job = a.job
        prompt = job.prompt or ""
        request = ExecuteRequest.of(
            job.params,
            job_id=a.job_id,
            prompt=prompt,
            model=worker.model_ref,
            protocol=worker.protocol,
        )
        cid = a.row.correlation_id
        try:
            await self.store.commit(jobs=[a.row], durable=False)
            async for ev in self.worker_client.execute(uri, request, correlation_id=cid):
                if a.terminal_sent:
                    return
                if a.stopping is not None:
                    if ev.kind in ("end", "error"):
                        return  # the stop path ends the job
                    continue
                if ev.kind == "started":
                    await self._send_started(a, pool_id, worker_id)
                elif ev.kind == "token":
                    await self._relay_token(a, ev.data)
                elif ev.kind == "metrics":
                    await self._send_started(a, pool_id, worker_id)
                    await self._emit(a, "metrics", ev.data)
                elif ev.kind == "end":
                    await self._send_started(a, pool_id, worker_id)
                    self._release(a, pool_id, worker_id)
                    await self._finish(a, JobStatus.COMPLETED, end_data=ev.data)
                    return
                elif ev.kind == "error":
                    self._release(a, pool_id, worker_id)
                    await self._worker_error(a, ev.data)
                    return
        except asyncio.CancelledError:
            raise
        except WorkerUnreachable as exc:
            self._release(a, pool_id, worker_id)
            self.metrics.dispatch.labels("unreachable").inc()
            self.listener.worker_failed(worker_id)
            await self.fault(a, ErrorCode.DISPATCH_FAILED, str(exc))
        except WorkerLost as exc:
            self._release(a, pool_id, worker_id)
            self.listener.worker_failed(worker_id)
            await self.fault(a, ErrorCode.WORKER_FAILED, str(exc))
        except Exception as exc:
            self._release(a, pool_id, worker_id)
            log("http.error", "relay failed", level=logging.ERROR, exc_info=True, job_id=a.job_id)
            await self.fault(a, ErrorCode.WORKER_FAILED, f"relay error: {type(exc).__name__}")
        finally:
            self._release(a, pool_id, worker_id)

    async def _send_started(self, a: ActiveJob, pool_id: str, worker_id: str) -> None:
        if a.started_sent:
            return
        a.started_sent = True
        data = {
            "job_id": a.job_id,
            "pool_id": pool_id,
            "worker_id": worker_id,
            "attempt": a.job.attempts,
        }
        await self._emit(a, "started", data)

    async def _relay_token(self, a: ActiveJob, data: dict[str, Any]) -> None:
        job = a.job
        await self._send_started(a, job.pool_id or "", job.worker_id or "")
        text = data.get("t", data.get("text", ""))
        first = a.row.tokens == 0
        a.row.tokens += 1
        if first:
            a.row.first_token_at = self.clock()
        payload = {"i": a.row.tokens - 1, "t": text if isinstance(text, str) else str(text)}
        if await self._emit(a, "token", payload, row=first):
            self.metrics.tokens_relayed.inc()
            if first:
                self.metrics.ttft.observe(max(0.0, self.clock() - job.created_at))

    async def _worker_error(self, a: ActiveJob, data: dict[str, Any]) -> None:
        code = str(data.get("code") or "WORKER_FAILED")
        message = str(data.get("message") or code)
        if code in _TRANSIENT_WORKER_CODES:
            await self.fault(a, ErrorCode.WORKER_FAILED, f"worker error {code}: {message}")
            return
        try:
            err = ErrorCode(code)
        except ValueError:
            err = ErrorCode.WORKER_FAILED
        await self._finish(a, JobStatus.FAILED, err, message)

    def _release(self, a: ActiveJob, pool_id: str, worker_id: str) -> None:
        jobs = self.load.get((pool_id, worker_id))
        if jobs is not None and a.job_id in jobs:
            jobs.discard(a.job_id)
            if not jobs:
                del self.load[(pool_id, worker_id)]
            self.listener.job_released(a.job_id, self.clock())
            self._changed()

    async def fault(self, a: ActiveJob, code: ErrorCode, message: str) -> None:
        """A transient fault on a running job: retry with backoff if no token was relayed and
        attempts remain, else fail (WORKER_FAILED once tokens were relayed)."""
        if a.terminal_sent or a.stopping is not None:
            return
        job = a.job
        if a.row.tokens > 0:
            await self._finish(a, JobStatus.FAILED, ErrorCode.WORKER_FAILED, message)
            return
        if job.attempts >= self.config.retry.max_attempts:
            msg = f"{message} (after {job.attempts} attempts)"
            await self._finish(a, JobStatus.FAILED, code, msg)
            return
        async with a.lock:
            if a.terminal_sent or job.status is not JobStatus.RUNNING:
                return
            job.requeue(now=self.clock())
            a.row.worker_uri = None
            a.in_backoff = True
            self._count_tenant(job, +1)
            await self.store.commit(jobs=[a.row], durable=False)
        delay = self.backoff_s(job.attempts)
        self.metrics.retries.labels(str(code)).inc()
        log(
            "job.retry",
            message,
            level=logging.WARNING,
            correlation_id=a.row.correlation_id,
            job_id=a.job_id,
            attempts=job.attempts,
            delay_s=round(delay, 3),
            code=str(code),
        )
        a.retry_handle = asyncio.get_running_loop().call_later(delay, self._retry_due, a)

    def _retry_due(self, a: ActiveJob) -> None:
        a.retry_handle = None
        if a.terminal_sent or a.stopping is not None or a.job.status is not JobStatus.QUEUED:
            return
        self._force_enqueue(a.job)
        a.in_backoff = False
        self.listener.job_queued(a.job)
        self._changed()

    # -- stopping: cancel, timeout, client gone --------------------------------------------

    async def stop_job(self, a: ActiveJob, reason: str) -> None:
        """Stop ``a`` for ``reason`` (cancel | timeout | client_gone); idempotent, and
        concurrent calls share one stop."""
        if a.terminal_sent:
            return
        if a.stop_task is None:
            a.stop_task = asyncio.get_running_loop().create_task(self._stop(a, reason))
        await asyncio.shield(a.stop_task)

    async def _stop(self, a: ActiveJob, reason: str) -> None:
        a.stopping = reason
        self.listener.job_unqueued(a.job_id)
        if reason == "timeout":
            status, code = JobStatus.FAILED, ErrorCode.DEADLINE_EXCEEDED
            message = f"job exceeded its timeout of {a.row.timeout_s:g}s"
            log(
                "job.timeout",
                message,
                level=logging.WARNING,
                job_id=a.job_id,
                correlation_id=a.row.correlation_id,
            )
        else:
            status, code = JobStatus.CANCELLED, ErrorCode.CANCELLED
            message = "cancelled" if reason == "cancel" else "client disconnected (grace expired)"
            log(
                "job.cancel",
                message,
                job_id=a.job_id,
                reason=reason,
                correlation_id=a.row.correlation_id,
            )
        if a.retry_handle is not None:
            a.retry_handle.cancel()
        relay = a.relay
        if a.job.status is JobStatus.RUNNING and relay is not None and not relay.done():
            uri = a.row.worker_uri
            if uri:
                self._spawn(
                    self._tell_worker_cancel(uri, a.job_id, a.row.correlation_id), name="cancel"
                )
            done, _ = await asyncio.wait({relay}, timeout=self.config.timeout.cancel_deadline_s)
            if not done:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await relay
        await self._finish(a, status, code, message)

    async def _tell_worker_cancel(self, uri: str, job_id: str, correlation_id: str) -> None:
        try:
            await asyncio.wait_for(
                self.worker_client.cancel(uri, job_id, correlation_id=correlation_id),
                timeout=self.config.timeout.cancel_deadline_s,
            )
        except (WorkerError, TimeoutError, OSError) as exc:
            log(
                "worker.cancel_failed",
                str(exc),
                level=logging.WARNING,
                job_id=job_id,
                correlation_id=correlation_id,
            )

    async def cancel(self, job_id: str, principal: Principal) -> JobStatusResponse:
        """``DELETE /v2/tasks/{id}``: cancel a queued or running job; a finished job is left
        as it is (idempotent). Waits at most the cancel deadline for the worker."""
        a = self.active.get(job_id)
        if a is not None and self._visible(a.job, principal) and not a.pending:
            await self.stop_job(a, "cancel")
        return await self.status(job_id, principal)

    # -- SSE subscribers -------------------------------------------------------------------

    def subscribe(self, a: ActiveJob) -> None:
        """An SSE client started following ``a``."""
        a.stream.subscribers += 1
        a.had_subscriber = True
        self.metrics.sse_clients.inc()
        if a.grace_handle is not None:
            a.grace_handle.cancel()
            a.grace_handle = None

    def unsubscribe(self, a: ActiveJob) -> None:
        """An SSE client left; the last one leaving starts the reconnect grace period."""
        a.stream.subscribers -= 1
        self.metrics.sse_clients.dec()
        if a.stream.subscribers > 0 or a.terminal_sent or a.stopping is not None:
            return
        grace = self.config.timeout.reconnect_grace_s
        log(
            "job.client_gone",
            f"no client; cancelling in {grace:g}s unless one reconnects",
            job_id=a.job_id,
            correlation_id=a.row.correlation_id,
        )
        a.grace_handle = asyncio.get_running_loop().call_later(grace, self._grace_due, a)

    def _grace_due(self, a: ActiveJob) -> None:
        a.grace_handle = None
        if a.stream.subscribers == 0 and not a.terminal_sent and a.stopping is None:
            self._spawn(self.stop_job(a, "client_gone"), name="client-gone")

    def stream_of(self, job_id: str) -> ActiveJob | None:
        """The live (or recently finished) job with its in-memory stream."""
        return self.active.get(job_id) or self.recent.get(job_id)

    # -- views -----------------------------------------------------------------------------

    @staticmethod
    def _visible(job: Job, principal: Principal) -> bool:
        return principal.operator or principal.kind == "pool" or job.tenant_id == principal.tenant

    def _response(self, row: JobRow, a: ActiveJob | None) -> JobStatusResponse:
        job = row.job
        position = None
        if job.status is JobStatus.QUEUED and job.job_id in self.queue:
            position = self._position(job.job_id)
        error = None
        if job.error_code is not None:
            error = JobError(code=str(job.error_code), message=job.error_message or "")
        return JobStatusResponse(
            job_id=job.job_id,
            status=str(job.status),  # type: ignore[arg-type]
            model=job.model_ref,
            priority=str(job.priority),  # type: ignore[arg-type]
            session_id=job.session_id,
            created_at=float(job.created_at),
            started_at=None if job.started_at is None else float(job.started_at),
            finished_at=None if job.finished_at is None else float(job.finished_at),
            queue_position=position,
            attempts=job.attempts,
            pool_id=job.pool_id,
            worker_id=job.worker_id,
            tokens_generated=row.tokens,
            prompt_hash=job.prompt_hash,
            error=error,
            explanation=self._explanation(job, a),
        )

    def _explanation(self, job: Job, a: ActiveJob | None) -> dict[str, Any] | None:
        if job.status is JobStatus.QUEUED and a is not None and a.eligible:
            try:
                why = self.listener.explain(job.job_id)
            except Exception:  # an explanation is a courtesy, never an error
                why = None
            if why is not None:
                return why
        return None if a is None else a.explanation

    async def status(self, job_id: str, principal: Principal) -> JobStatusResponse:
        """``GET /v2/tasks/{id}``; JOB_NOT_FOUND for unknown ids and other tenants' jobs."""
        a = self.active.get(job_id)
        if a is not None and not a.pending:
            if not self._visible(a.job, principal):
                raise JobNotFound(job_id)
            return self._response(a.row, a)
        row = await self.store.get_job(job_id)
        if row is None or not self._visible(row.job, principal):
            raise JobNotFound(job_id)
        return self._response(row, None)

    async def lookup(self, job_id: str, principal: Principal) -> JobRow:
        """The job's row (memory first), or JOB_NOT_FOUND."""
        a = self.active.get(job_id)
        if a is not None and not a.pending:
            if not self._visible(a.job, principal):
                raise JobNotFound(job_id)
            return a.row
        row = await self.store.get_job(job_id)
        if row is None or not self._visible(row.job, principal):
            raise JobNotFound(job_id)
        return row

    async def list_jobs(
        self, flt: JobFilter, *, limit: int, cursor: int | None, principal: Principal
    ) -> JobList:
        """``GET /v2/tasks``: newest first; tenants see only their own jobs."""
        if not principal.operator and principal.kind == "client":
            flt = JobFilter(flt.status, flt.priority, flt.session_id, principal.tenant, flt.model)
        page = await self.store.list_jobs(flt, limit=limit, before=cursor)
        items = []
        for row in page.rows:
            a = self.active.get(row.job.job_id)
            live = a.row if a is not None and not a.pending else row
            items.append(self._response(live, a))
        nxt = None if page.next_cursor is None else str(page.next_cursor)
        return JobList(items, nxt)

    # -- pools -----------------------------------------------------------------------------

    def register_pool(self, reg: PoolRegistration, principal: Principal) -> PoolInfo:
        """``POST /v2/pools/register``; POOL_CONFLICT if a live pool holds the id elsewhere."""
        info = self.registry.register(reg)
        self.pool_tokens[reg.pool_id] = principal.fingerprint
        self.listener.pool_updated(info)
        log(
            "pool.registered",
            "pool registered",
            pool_id=reg.pool_id,
            endpoint=reg.endpoint,
            workers=len(reg.workers),
            token=principal.fingerprint or None,
        )
        self._pool_gauges()
        self._changed()
        return info

    def _check_pool_owner(self, pool_id: str, principal: Principal) -> None:
        expected = self.pool_tokens.get(pool_id)
        if principal.kind == "pool" and expected and expected != principal.fingerprint:
            raise OrchestratorError(
                f"pool {pool_id} registered with another token", code=ErrorCode.FORBIDDEN
            )

    def heartbeat(self, pool_id: str, beat: PoolHeartbeat, principal: Principal) -> PoolInfo:
        """``POST /v2/pools/{id}/heartbeat``: refresh the inventory; jobs on workers the pool
        no longer reports (or reports failed) are treated as lost."""
        self._check_pool_owner(pool_id, principal)
        info = self.registry.heartbeat(pool_id, beat)
        self.listener.pool_updated(info)
        alive = {w.worker_id for w in info.workers if w.status is not WorkerStatus.FAILED}
        for (pid, wid), jobs in list(self.load.items()):
            if pid == pool_id and wid not in alive:
                for job_id in list(jobs):
                    a = self.active.get(job_id)
                    if a is not None:
                        self._spawn(self.worker_gone(a, "worker vanished"), name="worker-gone")
        self._pool_gauges()
        self._changed()
        return info

    def unregister_pool(self, pool_id: str, principal: Principal) -> PoolInfo:
        """``DELETE /v2/pools/{id}``: forget the pool; its running jobs are treated as lost."""
        self._check_pool_owner(pool_id, principal)
        info = self.registry.unregister(pool_id)
        self.pool_tokens.pop(pool_id, None)
        self.listener.pool_removed(pool_id)
        self._pool_lost(pool_id)
        log("pool.unregistered", "pool unregistered", pool_id=pool_id)
        self._pool_gauges()
        self._changed()
        return info

    def _pool_lost(self, pool_id: str) -> None:
        for (pid, _wid), jobs in list(self.load.items()):
            if pid != pool_id:
                continue
            for job_id in list(jobs):
                a = self.active.get(job_id)
                if a is not None:
                    self._spawn(self.worker_gone(a, f"pool {pool_id} went away"), name="gone")

    async def worker_gone(self, a: ActiveJob, why: str) -> None:
        """The worker of a running job is gone: cut the relay, then retry (no token yet) or
        fail with WORKER_FAILED."""
        relay = a.relay
        if relay is not None and not relay.done():
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relay
        if a.job.status is JobStatus.RUNNING:
            await self.fault(a, ErrorCode.WORKER_FAILED, why)

    def sweep_pools(self) -> None:
        """Apply pool status changes (the registry derives them from heartbeat ages)."""
        for change in self.registry.sweep():
            log(
                "pool.status",
                f"{change.old} -> {change.new}",
                pool_id=change.pool_id,
                old=str(change.old),
                new=str(change.new),
            )
            self.listener.pool_status(change.pool_id, change.new)
            if change.new is PoolStatus.OFFLINE:
                self._pool_lost(change.pool_id)
        self._pool_gauges()

    def _pool_gauges(self) -> None:
        pools = dict.fromkeys(("online", "degraded", "offline"), 0)
        workers = {s.value: 0 for s in WorkerStatus}
        for pool in self.registry.list():
            pools[str(pool.status)] += 1
            for w in pool.workers:
                workers[str(w.status)] += 1
        for k, v in pools.items():
            self.metrics.pools.labels(k).set(v)
        for k, v in workers.items():
            self.metrics.workers.labels(k).set(v)

    async def _sweep_loop(self) -> None:
        period = max(0.05, min(1.0, self.config.heartbeat.interval_s / 2))
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep_pools()
            except Exception:
                log("http.error", "pool sweep failed", level=logging.ERROR, exc_info=True)
            self.listener.changed()  # the timer event of the scheduling loop

    async def _purge_loop(self) -> None:
        retention = self.config.persistence.result_retention_s
        while True:
            try:
                await self.store.purge_results(self.clock() - retention)
            except Exception:
                log("http.error", "result purge failed", level=logging.ERROR, exc_info=True)
            await asyncio.sleep(600)

    # -- worker start / eviction (executed for the scheduler) ------------------------------

    def canonical_model(self, name: str) -> str:
        """The catalog's model_ref for ``name`` (a model_ref or one of its aliases)."""
        entry = self.catalog.get(name)
        return name if entry is None else entry.model_ref

    async def start_worker(self, pool_id: str, gpu_id: str, model_ref: str) -> str | None:
        """Ask a pool to start a worker; returns the new worker id or ``None`` on refusal."""
        try:
            pool = self.registry.get(pool_id)
        except OrchestratorError:
            return None
        log("pool.worker_start", "starting worker", pool_id=pool_id, gpu_id=gpu_id, model=model_ref)
        try:
            worker_id = await self.pool_client.start_worker(
                pool.endpoint,
                pool_id=pool_id,
                model_ref=model_ref,
                gpu_id=gpu_id,
                correlation_id=uuid.uuid4().hex,
            )
        except PoolRequestFailed as exc:
            self.metrics.worker_starts.labels(exc.code).inc()
            log(
                "pool.worker_start",
                exc.message,
                level=logging.WARNING,
                pool_id=pool_id,
                code=exc.code,
            )
            # A model the catalog gives no VRAM for looks as if it fitted anywhere: the
            # pool's figure lets the policy plan an eviction or see that it can never fit.
            needed = exc.details.get("vram_needed_bytes")
            if isinstance(needed, int) and needed > 0:
                self.listener.model_vram_learned(model_ref, needed)
            return None
        self.metrics.worker_starts.labels("ok").inc()
        return worker_id

    async def evict_worker(self, pool_id: str, worker_id: str, reason: str) -> bool:
        """Ask a pool to stop an idle worker (never one the daemon runs jobs on)."""
        if self.worker_load(pool_id, worker_id) > 0:
            return False
        try:
            pool = self.registry.get(pool_id)
        except OrchestratorError:
            return False
        log(
            "pool.worker_stop",
            "evicting worker",
            pool_id=pool_id,
            worker_id=worker_id,
            reason=reason,
        )
        try:
            await self.pool_client.stop_worker(
                pool.endpoint, worker_id, correlation_id=uuid.uuid4().hex
            )
        except PoolRequestFailed as exc:
            log("pool.worker_stop", exc.message, level=logging.WARNING, code=exc.code)
            return False
        self.metrics.worker_evictions.labels(reason or "policy").inc()
        return True

    async def reject(self, job_id: str, code: ErrorCode, message: str) -> bool:
        """Fail a queued job on the scheduler's word (e.g. NO_CAPACITY)."""
        a = self.active.get(job_id)
        if a is None or not a.eligible:
            return False
        await self._finish(a, JobStatus.FAILED, code, message)
        return True

    def eligible_jobs(self, limit: int | None = None) -> Iterable[Job]:
        """Queued jobs the scheduler may dispatch, in queue order."""
        jobs = self.queue.head(limit) if limit is not None else list(self.queue)
        for job in jobs:
            a = self.active.get(job.job_id)
            if a is not None and a.eligible:
                yield job
