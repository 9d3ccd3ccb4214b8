"""Restart recovery: the unfinished jobs of the store come back to life.

Jobs are restored in admission order. A queued job is queued again. A job found running is
queued again if no token had been relayed and attempts remain (its old worker is told to
stop it), else it fails with WORKER_FAILED: a client may already hold part of its answer.
Recovered jobs re-enter the queue past its capacity: they were admitted once and keep the
room they had.
"""

from __future__ import annotations

from orchestrator_core import ErrorCode, JobStatus

from orchestratord.logs import log
from orchestratord.services.context import Context
from orchestratord.services.events import LOST_EVENTS_GAP
from orchestratord.services.jobs import ActiveJob
from orchestratord.services.lifecycle import Lifecycle
from orchestratord.streams import JobStream

__all__ = ["recover"]


def _why_not_retry(a: ActiveJob, max_attempts: int) -> str:
    """Why a job found running cannot run again ("" if it can)."""
    if a.row.first_token_at is not None or a.row.tokens > 0:
        return "the orchestrator restarted after tokens were relayed"
    if a.job.attempts >= max_attempts:
        return "the orchestrator restarted and no attempts remain"
    return ""


async def recover(ctx: Context, lifecycle: Lifecycle) -> None:
    """Restore the store's unfinished jobs (see the module docstring)."""
    rows = await ctx.store.unfinished_jobs()
    requeued = failed = 0
    now = ctx.clock()
    for row in rows:
        events = await ctx.store.events_after(row.job.job_id, 0)
        a = ActiveJob(row=row, stream=JobStream(row.job.job_id, events))
        a.started_sent = any(e.kind == "started" for e in events)
        row.tokens = sum(1 for e in events if e.kind == "token")
        if row.first_token_at is not None:
            # Deferred token events may have been published and never stored: the terminal
            # event is numbered past any id a client can hold.
            a.events_lost = True
            a.last_reserved = a.stream.last_id + LOST_EVENTS_GAP
        a.pending = False
        ctx.jobs.add(a)
        job = row.job
        if job.status is JobStatus.RUNNING:
            if row.worker_uri:
                lifecycle.tell_worker_cancel(row.worker_uri, a.job_id, row.correlation_id)
            reason = _why_not_retry(a, ctx.retry.max_attempts)
            if reason:
                log("daemon.crash_recovery", reason, job_id=a.job_id, action="fail")
                await lifecycle.finish(a, JobStatus.FAILED, ErrorCode.WORKER_FAILED, reason)
                failed += 1
                continue
            job.requeue(now=now)
            row.worker_uri = None
            await ctx.store.commit(jobs=[row], durable=True)
            log("daemon.crash_recovery", "re-queued", job_id=a.job_id, action="requeue")
            requeued += 1
        ctx.cluster.enqueue(job)
        lifecycle.arm_deadline(a)
    log(
        "daemon.recovered",
        "restart recovery done",
        queued=ctx.cluster.queued(),
        requeued=requeued,
        failed=failed,
    )
    ctx.changed()
