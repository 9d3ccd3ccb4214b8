"""Restart recovery: the unfinished jobs of the store come back to life (at start, or when
this daemon takes the lead), and adoption of the jobs other daemons stored.

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
from orchestratord.store import JobRow

__all__ = ["adopt", "recover"]


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
    outcomes = {"queued": 0, "requeued": 0, "failed": 0}
    for row in rows:
        if ctx.jobs.get(row.job.job_id) is None:
            outcomes[await _restore(ctx, lifecycle, row)] += 1
    log(
        "daemon.recovered",
        "restart recovery done",
        queued=ctx.cluster.queued(),
        requeued=outcomes["requeued"],
        failed=outcomes["failed"],
    )
    ctx.changed()


async def adopt(ctx: Context, lifecycle: Lifecycle, job_id: str) -> ActiveJob | None:
    """Take on a job another daemon stored (a follower's submission), if it is unfinished
    and not already here; the job as this daemon now runs it."""
    if ctx.jobs.get(job_id) is not None or job_id in ctx.adopting:
        return ctx.jobs.get(job_id)
    ctx.adopting.add(job_id)
    try:
        row = await ctx.store.get_job(job_id)
        if row is None or row.job.is_terminal or ctx.jobs.get(job_id) is not None:
            return ctx.jobs.get(job_id)
        await _restore(ctx, lifecycle, row)
    finally:
        ctx.adopting.discard(job_id)
    ctx.changed()
    return ctx.jobs.get(job_id)


async def _restore(ctx: Context, lifecycle: Lifecycle, row: JobRow) -> str:
    """Bring one unfinished stored job to life: ``queued``, ``requeued`` or ``failed``."""
    events = await ctx.store.events_after(row.job.job_id, 0)
    a = ActiveJob(row=row, stream=ctx.new_stream(row.job.job_id, events))
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
    outcome = "queued"
    if job.status is JobStatus.RUNNING:
        if row.worker_uri:
            lifecycle.tell_worker_cancel(row.worker_uri, a.job_id, row.correlation_id)
        reason = _why_not_retry(a, ctx.retry.max_attempts)
        if reason:
            log("daemon.crash_recovery", reason, job_id=a.job_id, action="fail")
            await lifecycle.finish(a, JobStatus.FAILED, ErrorCode.WORKER_FAILED, reason)
            return "failed"
        job.requeue(now=ctx.clock())
        row.worker_uri = None
        await ctx.store.commit(jobs=[row], durable=True)
        log("daemon.crash_recovery", "re-queued", job_id=a.job_id, action="requeue")
        outcome = "requeued"
    ctx.cluster.enqueue(job)
    lifecycle.arm_deadline(a)
    return outcome
