"""Admission: a validated request becomes a durably queued job, or a refusal with a code.

Steps of :meth:`Admission.submit`:

1. resolve the model (the catalog, or a model a pool that is not offline reports);
2. check the context: prompt tokens, estimated as UTF-8 bytes / 4 rounded up, plus
   ``max_tokens`` must fit the model's context length (CONTEXT_TOO_LARGE);
3. check ``timeout_s`` against ``timeout.max_s``;
4. ask the library's pure :func:`~orchestrator_core.scheduling.admit` about the tenant's quota
   and the queue's capacity and full-queue policy (QUOTA_EXCEEDED / QUEUE_FULL, 429 with
   Retry-After; or room made by dropping the oldest batch job);
5. commit the job row and its ``queued`` event durably (with the dropped job's end, if any);
6. only then add the job to the cluster model, where the scheduler sees it, and answer 202.

Admissions in flight (between 4 and 6) are *reserved*: they count against capacity and
quotas, so concurrent admissions never overshoot them; a reservation ends when its job
enters the model. Under drop-oldest-batch, a job that finds the queue's last room held by
admissions in flight waits until one of them has entered the queue (it can then be
dropped) and decides again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from orchestrator_core import (
    ErrorCode,
    Job,
    JobKind,
    JobParams,
    JobStatus,
    ModelNotFound,
    OrchestratorError,
    PoolStatus,
    Priority,
    QueueFull,
    RequestInvalid,
    TaskSubmitRequest,
    TaskSubmitResponse,
)
from orchestrator_core.errors import FieldError
from orchestrator_core.jobs import new_job_id
from orchestrator_core.queues import FullQueuePolicy
from orchestrator_core.scheduling import AdmissionLimits, Admitted, ClusterState, Refused, admit

from orchestratord.auth import Principal
from orchestratord.logs import log
from orchestratord.services.context import Context
from orchestratord.services.events import EventWriter
from orchestratord.services.jobs import ActiveJob
from orchestratord.services.lifecycle import Lifecycle
from orchestratord.store import JobRow, StoredEvent

__all__ = ["Admission", "JobSpec", "estimate_prompt_tokens"]

_DROPPED = "dropped from a full queue to make room (drop-oldest-batch)"


def estimate_prompt_tokens(prompt: str) -> int:
    """Estimated token count of ``prompt``: UTF-8 bytes / 4, rounded up (≈ 4 bytes per token
    for English text with common tokenizers; conservative for most other text)."""
    return math.ceil(len(prompt.encode("utf-8")) / 4)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated request for a job, whatever door it came through."""

    model: str
    """The model name or alias the client asked for."""
    prompt: str
    """The job's input as stored: the prompt, or a chat job's messages as JSON."""
    input_text: str
    """The text the prompt-token estimate (context check) reads."""
    params: JobParams
    priority: Priority = Priority.INTERACTIVE
    session_id: str | None = None
    timeout_s: float | None = None
    kind: JobKind = JobKind.TASK


class Admission:
    """Admits new jobs (see the module docstring)."""

    def __init__(self, ctx: Context, lifecycle: Lifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.limits = AdmissionLimits.from_config(ctx.config)
        self.no_chat = {m.model_ref for m in ctx.config.models if not m.chat}
        """Catalog models marked ``chat = false`` (base models without a chat template)."""
        self._reserved = 0
        self._reserved_by_tenant: Counter[str] = Counter()
        self._released = asyncio.Event()
        """Set (and replaced) whenever an admission in flight ends."""

    def resolve_model(self, name: str) -> tuple[str, int | None]:
        """``(model_ref, context_length)`` of a model name or alias known to the catalog or
        reported by a pool that is not offline; :class:`ModelNotFound` otherwise."""
        entry = self.ctx.cluster.state.catalog.get(name)
        if entry is not None:
            return entry.model_ref, entry.context_length
        for pool in self.ctx.cluster.pools():
            if pool.status is PoolStatus.OFFLINE:
                continue
            if name in pool.models or any(w.model_ref == name for w in pool.workers):
                return name, None
        raise ModelNotFound(name)

    async def submit(
        self, req: TaskSubmitRequest, *, principal: Principal, correlation_id: str
    ) -> TaskSubmitResponse:
        """Admit a validated ``/v2`` request; returns after the durable commit. Raises
        :class:`OrchestratorError` with a stable code on refusal."""
        req.validate()
        spec = JobSpec(
            model=req.model,
            prompt=req.prompt,
            input_text=req.prompt,
            params=JobParams.from_mapping(req.model_dump()),
            priority=Priority(req.priority),
            session_id=req.session_id,
            timeout_s=req.timeout_s,
        )
        return await self.submit_spec(spec, principal=principal, correlation_id=correlation_id)

    async def submit_spec(
        self, spec: JobSpec, *, principal: Principal, correlation_id: str
    ) -> TaskSubmitResponse:
        """Admit a job of any kind (the ``/v1`` routes build their own :class:`JobSpec`);
        returns after the durable commit."""
        t0 = time.perf_counter()
        try:
            response = await self._admit(spec, principal, correlation_id)
        except OrchestratorError as err:
            self.ctx.metrics.tasks_rejected.labels(str(err.code)).inc()
            log("job.rejected", err.message, code=str(err.code), level=logging.DEBUG)
            raise
        self.ctx.metrics.admission_latency.observe(time.perf_counter() - t0)
        return response

    def _check(self, spec: JobSpec) -> tuple[str, float]:
        """Model, context and timeout checks; returns ``(model_ref, timeout_s)``."""
        if not self.ctx.ready:
            raise OrchestratorError("the orchestrator is starting", code=ErrorCode.POOL_UNAVAILABLE)
        model_ref, context = self.resolve_model(spec.model)
        if spec.kind is JobKind.CHAT and model_ref in self.no_chat:
            message = f"model: {spec.model} does not serve chat (use /v1/completions)"
            raise RequestInvalid([FieldError("model", ErrorCode.INVALID_PARAMETER, message)])
        max_tokens = spec.params.max_tokens
        if context is not None:
            needed = estimate_prompt_tokens(spec.input_text) + max_tokens
            if needed > context:
                raise OrchestratorError(
                    f"prompt (~{needed - max_tokens} tokens) + max_tokens ({max_tokens})"
                    f" exceeds the context of {model_ref} ({context} tokens)",
                    code=ErrorCode.CONTEXT_TOO_LARGE,
                    details={"model": model_ref, "context_length": context, "needed": needed},
                )
        timeout = self.ctx.config.timeout
        timeout_s = timeout.default_s if spec.timeout_s is None else spec.timeout_s
        if timeout_s > timeout.max_s:
            message = f"timeout_s: must be <= {timeout.max_s}, got {timeout_s}"
            raise RequestInvalid([FieldError("timeout_s", ErrorCode.INVALID_PARAMETER, message)])
        return model_ref, float(timeout_s)

    async def _admit(
        self, spec: JobSpec, principal: Principal, correlation_id: str
    ) -> TaskSubmitResponse:
        model_ref, timeout_s = self._check(spec)
        now = self.ctx.clock()
        job = Job(
            job_id=new_job_id(),
            model_ref=model_ref,
            prompt=spec.prompt,
            params=spec.params,
            priority=spec.priority,
            session_id=spec.session_id,
            tenant_id=principal.tenant,
            created_at=now,
            queued_at=now,
            kind=spec.kind,
        )
        if not self.ctx.leading:
            return await self._for_the_leader(job, timeout_s, correlation_id)
        decision, dropped = await self._decide(job)
        row = JobRow(job=job, timeout_s=timeout_s, correlation_id=correlation_id)
        a = ActiveJob(row=row, stream=self.ctx.new_stream(job.job_id), last_reserved=1)  # queued
        queued = EventWriter.queued_event(job.job_id, decision.position, model_ref)
        rows, events = [row], [queued]
        if dropped is not None:
            victim, ended = dropped
            rows.append(ended)
            events.append(EventWriter.ended_event(victim.job_id, ended, victim.last_reserved + 1))
        self.ctx.jobs.add(a)
        self._reserve(job, +1)
        try:
            await self._store(rows, events)
        except OrchestratorError:
            self._reserve(job, -1)
            self.ctx.jobs.discard(job.job_id)
            self._undrop(dropped)
            raise
        a.stream.publish(queued)
        a.pending = False
        self.ctx.cluster.mutate(lambda state: self._enter(state, job))
        if dropped is not None:
            self._dropped(dropped, events[-1])
        self.lifecycle.arm_deadline(a)
        self._admitted(job, "job queued", position=decision.position)
        await self.ctx.cluster.settled()  # 202 once the job is in the model (read your write)
        self.ctx.changed()
        position = self.ctx.cluster.position(job.job_id)
        return TaskSubmitResponse(
            job_id=job.job_id,
            queue_position=decision.position if position is None else position,
            events_url=f"/v2/tasks/{job.job_id}/events",
        )

    async def _store(
        self, rows: list[JobRow], events: list[StoredEvent], *, unfenced: bool = False
    ) -> None:
        """The admission's durable commit. The store's own refusals (503 ``NOT_LEADER``,
        ``STORE_UNAVAILABLE``) pass as they are; anything else is 500 ``INTERNAL``."""
        try:
            await self.ctx.store.commit(jobs=rows, events=events, durable=True, unfenced=unfenced)
        except OrchestratorError as exc:
            log("http.error", f"admission commit refused: {exc}", level=logging.WARNING)
            raise
        except Exception:
            log("http.error", "admission commit failed", level=logging.ERROR, exc_info=True)
            raise OrchestratorError("could not store the job", code=ErrorCode.INTERNAL) from None

    def _admitted(self, job: Job, message: str, **fields: Any) -> None:
        """Count and log an admitted job."""
        self.ctx.metrics.tasks_enqueued.labels(str(job.priority)).inc()
        log(
            "job.admitted",
            message,
            job_id=job.job_id,
            model=job.model_ref,
            priority=str(job.priority),
            **fields,
        )

    async def _for_the_leader(
        self, job: Job, timeout_s: float, correlation_id: str
    ) -> TaskSubmitResponse:
        """A follower's admission: the job is stored durably (unfenced: any daemon may) and
        handed to the leader, which takes it into its queue. The queue's capacity is checked
        against the jobs queued in the store (a full queue is ``429 QUEUE_FULL`` here too,
        whatever ``queue.full_policy``: only the leader may drop a job); tenant quotas are
        the leader's to enforce; the position given is 0."""
        capacity = self.ctx.config.queue.capacity
        if capacity >= 0 and await self.ctx.store.queued_count() >= capacity:
            raise QueueFull(capacity)
        row = JobRow(job=job, timeout_s=timeout_s, correlation_id=correlation_id)
        queued = EventWriter.queued_event(job.job_id, 0, job.model_ref)
        await self._store([row], [queued], unfenced=True)
        self.ctx.hand_off(job.job_id)
        self._admitted(job, "job stored for the leader")
        return TaskSubmitResponse(
            job_id=job.job_id, queue_position=0, events_url=f"/v2/tasks/{job.job_id}/events"
        )

    async def _decide(self, job: Job) -> tuple[Admitted, tuple[ActiveJob, JobRow] | None]:
        """The library's admission decision, counting the admissions in flight. A full queue
        whose room is held by admissions in flight (which drop-oldest-batch cannot drop yet)
        is decided again once one of them has entered the queue; a decision to drop a job
        waits until the model can take it out at once (no policy call reading it)."""
        while True:
            decision = admit(
                self.ctx.cluster.state,
                job,
                self.limits,
                reserved=self._reserved,
                reserved_by_tenant=self._reserved_by_tenant,
            )
            if not isinstance(decision, Refused):
                if decision.dropped is None:
                    return decision, None
                if not self.ctx.cluster.is_frozen:
                    dropped = self._drop(decision.dropped)
                    if dropped is not None:
                        return decision, dropped
                    await asyncio.sleep(0)  # it is ending right now: decide again
                    continue
                # The job to drop leaves the model only once the policy call returns.
                await self.ctx.cluster.thawed()
                continue
            waiting_on_reserved = (
                decision.error.code is ErrorCode.QUEUE_FULL
                and self.limits.full_policy is FullQueuePolicy.DROP_OLDEST_BATCH
                and self._reserved > 0
            )
            if not waiting_on_reserved:
                raise decision.error
            await self._released.wait()

    def _enter(self, state: ClusterState, job: Job) -> None:
        """A committed job enters the cluster model; its reservation ends."""
        self._reserve(job, -1)
        if job.status is JobStatus.QUEUED and state.get_job(job.job_id) is None:
            state.add_job(job)

    def _reserve(self, job: Job, delta: int) -> None:
        self._reserved += delta
        if job.tenant_id is not None:
            self._reserved_by_tenant[job.tenant_id] += delta
            if self._reserved_by_tenant[job.tenant_id] <= 0:
                del self._reserved_by_tenant[job.tenant_id]
        if delta < 0:
            released, self._released = self._released, asyncio.Event()
            released.set()

    def _drop(self, job_id: str | None) -> tuple[ActiveJob, JobRow] | None:
        """Take the job chosen to make room out of the queue; returns it with its ended row
        (a copy: the job itself ends only once that row is stored)."""
        a = None if job_id is None else self.ctx.jobs.visible(job_id)
        if a is None or not a.eligible:
            return None
        a.closing = True
        self.ctx.cluster.unqueue(a.job_id)
        ended = a.row.copy()
        ended.job.fail(ErrorCode.QUEUE_FULL, _DROPPED, now=self.ctx.clock())
        return a, ended

    def _undrop(self, dropped: tuple[ActiveJob, JobRow] | None) -> None:
        """The admission that dropped a job failed to commit: that job stays queued."""
        if dropped is not None:
            a, _ = dropped
            a.closing = False
            self.ctx.cluster.enqueue(a.job)

    def _dropped(self, dropped: tuple[ActiveJob, JobRow], terminal: StoredEvent) -> None:
        a, ended = dropped
        a.row = ended
        a.last_reserved = terminal.event_id
        a.terminal_sent = True
        a.stream.publish(terminal)
        self.ctx.metrics.tasks_dropped.inc()
        log("job.dropped", "dropped by drop-oldest-batch", job_id=a.job_id)
        self.lifecycle.retire(a)
