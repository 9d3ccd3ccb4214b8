"""The end of jobs, and everything that leads to it: faults and retries, stops (cancel,
timeout, client gone), deadlines and the SSE clients that keep a job alive.

Exactly one terminal event per job: :meth:`Lifecycle.finish` is the only way to end a job,
runs under the job's lock and refuses a second end; stores refuse a second terminal event
as a safety net.

* **Faults** before the first token are retried with exponential backoff and jitter (the
  :class:`~orchestrator_core.retry.RetryPolicy` decides); after it the job fails with
  WORKER_FAILED.
* **Stops** tell the worker at once, wait up to ``timeout.cancel_deadline_s`` for it to
  confirm, then end the job regardless.
* **Clients**: when the last SSE client of a running job leaves, the job is cancelled after
  ``timeout.reconnect_grace_s`` unless one reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from orchestrator_core import ErrorCode, JobStatus
from orchestrator_core.retry import Fail

from orchestratord.logs import log
from orchestratord.services.context import Context
from orchestratord.services.events import EventWriter
from orchestratord.services.jobs import ActiveJob
from orchestratord.workers import WorkerError

__all__ = ["Lifecycle"]

_STOP_MESSAGES = {
    "cancel": "cancelled",
    "client_gone": "client disconnected (grace expired)",
    "disconnected": "client disconnected",
}


class Lifecycle:
    """Ends, retries and stops jobs (see the module docstring)."""

    def __init__(self, ctx: Context, events: EventWriter) -> None:
        self.ctx = ctx
        self.events = events
        events.on_write_failed = self._write_failed

    # -- the end of a job ------------------------------------------------------------------

    async def finish(
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
            await self.events.drain(a)  # the row must not turn terminal under an older event
            if a.terminal_sent or a.job.is_terminal:
                return False
            self._end(a, status, code, message)
            event = self.events.terminal_event(a, end_data)
            try:
                await self.ctx.store.commit(jobs=[a.row], events=[*a.unstored, event], durable=True)
            except Exception:
                log(
                    "http.error",
                    "terminal commit failed",
                    level=logging.ERROR,
                    exc_info=True,
                    job_id=a.job_id,
                )
                raise
            a.unstored.clear()
            a.terminal_sent = True
            a.stream.publish(event, gap_ok=a.write_failed or a.events_lost)
        self.retire(a)
        return True

    def _end(self, a: ActiveJob, status: JobStatus, code: ErrorCode | None, message: str) -> None:
        job, now = a.job, self.ctx.clock()
        if job.status is JobStatus.QUEUED:
            self.ctx.cluster.unqueue(job.job_id)
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

    def retire(self, a: ActiveJob) -> None:
        """``a`` ended (its terminal event is out): timers off, out of the model, metrics."""
        a.cancel_timers()
        self.ctx.cluster.unqueue(a.job_id)
        self.ctx.jobs.retire(a)
        job = a.job
        outcome = str(job.status)
        self.ctx.metrics.jobs_finished.labels(outcome).inc()
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
        self.ctx.changed()

    def _write_failed(self, a: ActiveJob) -> None:
        if a.relay is not None and not a.relay.done():
            a.relay.cancel()
        self.ctx.tasks.spawn(
            self.finish(a, JobStatus.FAILED, ErrorCode.INTERNAL, "storage error"),
            name="store-failed",
        )

    async def reject(self, job_id: str, code: ErrorCode, message: str) -> bool:
        """Fail a queued job on the scheduler's word (e.g. NO_CAPACITY)."""
        a = self.ctx.jobs.get(job_id)
        if a is None or not a.eligible:
            return False
        await self.finish(a, JobStatus.FAILED, code, message)
        return True

    # -- workers ---------------------------------------------------------------------------

    def release(self, a: ActiveJob) -> None:
        """``a`` no longer occupies its worker (any outcome); idempotent."""
        if a.on_worker is None:
            return
        a.on_worker = None
        self.ctx.cluster.released(a.job_id, self.ctx.clock())
        self.ctx.changed()

    async def fault(self, a: ActiveJob, code: ErrorCode, message: str) -> None:
        """A transient fault on a running job: retry with backoff if no token was relayed and
        attempts remain, else fail (WORKER_FAILED once tokens were relayed)."""
        if a.terminal_sent or a.stopping is not None:
            return
        job = a.job
        decision = self.ctx.retry.decide(
            attempts=job.attempts, tokens_relayed=a.row.tokens, code=code, message=message
        )
        if isinstance(decision, Fail):
            await self.finish(a, JobStatus.FAILED, decision.code, decision.message)
            return
        async with a.lock:
            if a.terminal_sent or job.status is not JobStatus.RUNNING:
                return
            job.requeue(now=self.ctx.clock())
            a.row.worker_uri = None
            a.in_backoff = True
            await self.ctx.store.commit(jobs=[a.row], durable=False)
        self.ctx.metrics.retries.labels(str(code)).inc()
        log(
            "job.retry",
            message,
            level=logging.WARNING,
            correlation_id=a.row.correlation_id,
            job_id=a.job_id,
            attempts=job.attempts,
            delay_s=round(decision.delay_s, 3),
            code=str(code),
        )
        loop = asyncio.get_running_loop()
        a.retry_handle = loop.call_later(decision.delay_s, self._retry_due, a)

    def _retry_due(self, a: ActiveJob) -> None:
        a.retry_handle = None
        if a.terminal_sent or a.stopping is not None or a.job.status is not JobStatus.QUEUED:
            return
        a.in_backoff = False
        self.ctx.cluster.enqueue(a.job)
        self.ctx.changed()

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

    # -- deadlines and stops ---------------------------------------------------------------

    def arm_deadline(self, a: ActiveJob) -> None:
        """Stop ``a`` with DEADLINE_EXCEEDED when its timeout expires."""
        delay = max(0.0, a.row.deadline - self.ctx.clock())
        a.deadline_handle = asyncio.get_running_loop().call_later(delay, self._deadline_due, a)

    def _deadline_due(self, a: ActiveJob) -> None:
        if not a.terminal_sent and a.stopping is None:
            self.ctx.tasks.spawn(self.stop_job(a, "timeout"), name="timeout")

    async def stop_job(self, a: ActiveJob, reason: str) -> None:
        """Stop ``a`` for ``reason`` (cancel | timeout | client_gone after the reconnect
        grace | disconnected, a ``/v1`` client that closed its connection: no grace, no
        resume); idempotent, and concurrent calls share one stop."""
        if a.terminal_sent:
            return
        if a.stop_task is None:
            a.stop_task = asyncio.get_running_loop().create_task(self._stop(a, reason))
        await asyncio.shield(a.stop_task)

    async def _stop(self, a: ActiveJob, reason: str) -> None:
        a.stopping = reason
        self.ctx.cluster.unqueue(a.job_id)
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
            message = _STOP_MESSAGES.get(reason, reason)
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
                self.tell_worker_cancel(uri, a.job_id, a.row.correlation_id)
            timeout = self.ctx.config.timeout.cancel_deadline_s
            done, _ = await asyncio.wait({relay}, timeout=timeout)
            if not done:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await relay
        await self.finish(a, status, code, message)

    def tell_worker_cancel(self, uri: str, job_id: str, correlation_id: str) -> None:
        """Ask the worker at ``uri`` to stop ``job_id`` (in the background, bounded by the
        cancel deadline; a failure is logged)."""
        self.ctx.tasks.spawn(self._tell_cancel(uri, job_id, correlation_id), name="cancel")

    async def _tell_cancel(self, uri: str, job_id: str, correlation_id: str) -> None:
        try:
            await asyncio.wait_for(
                self.ctx.worker_client.cancel(uri, job_id, correlation_id=correlation_id),
                timeout=self.ctx.config.timeout.cancel_deadline_s,
            )
        except (WorkerError, TimeoutError, OSError) as exc:
            log(
                "worker.cancel_failed",
                str(exc),
                level=logging.WARNING,
                job_id=job_id,
                correlation_id=correlation_id,
            )

    # -- SSE clients -----------------------------------------------------------------------

    def subscribe(self, a: ActiveJob) -> None:
        """An SSE client started following ``a``."""
        a.stream.subscribers += 1
        a.had_subscriber = True
        self.ctx.metrics.sse_clients.inc()
        if a.grace_handle is not None:
            a.grace_handle.cancel()
            a.grace_handle = None

    def unsubscribe(self, a: ActiveJob) -> None:
        """An SSE client left; the last one leaving starts the reconnect grace period."""
        a.stream.subscribers -= 1
        self.ctx.metrics.sse_clients.dec()
        if a.stream.subscribers > 0 or a.terminal_sent or a.stopping is not None:
            return
        grace = self.ctx.config.timeout.reconnect_grace_s
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
            self.ctx.tasks.spawn(self.stop_job(a, "client_gone"), name="client-gone")
