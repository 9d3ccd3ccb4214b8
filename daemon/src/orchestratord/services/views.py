"""Views of jobs for the API: one job's status, a page of jobs, and the tenant rule.

Live jobs are read from memory (with their queue position from the cluster model, the same
order the scheduler dispatches in, and an explanation of why a queued job waits); finished
ones from the store. A tenant sees only its own jobs; operators and pools see all; another
tenant's job is reported as not found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator_core import Job, JobError, JobNotFound, JobStatus, JobStatusResponse

from orchestratord.auth import Principal
from orchestratord.services.context import Context
from orchestratord.services.jobs import ActiveJob
from orchestratord.store import JobFilter, JobRow

__all__ = ["JobList", "Views", "visible_to"]

Explainer = Callable[[str], dict[str, Any] | None]


def visible_to(job: Job, principal: Principal) -> bool:
    """May ``principal`` see ``job``?"""
    return principal.operator or principal.kind == "pool" or job.tenant_id == principal.tenant


@dataclass(frozen=True, slots=True)
class JobList:
    """A page of ``GET /v2/tasks``."""

    items: list[JobStatusResponse]
    next_cursor: str | None


class Views:
    """Job status and listings (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.explain: Explainer = lambda _job_id: None
        """Why a queued job waits, if the policy can tell (the scheduling loop sets it)."""

    def response(self, row: JobRow, a: ActiveJob | None) -> JobStatusResponse:
        """The API view of a job."""
        job = row.job
        position = None
        if job.status is JobStatus.QUEUED:
            position = self.ctx.cluster.position(job.job_id)
        error = None
        if job.error_code is not None:
            error = JobError(code=str(job.error_code), message=job.error_message or "")
        return JobStatusResponse(
            job_id=job.job_id,
            kind=str(job.kind),  # type: ignore[arg-type]
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
                why = self.explain(job.job_id)
            except Exception:  # an explanation is a courtesy, never an error
                why = None
            if why is not None:
                return why
        return None if a is None else a.explanation

    async def lookup(self, job_id: str, principal: Principal) -> JobRow:
        """The job's row (memory first), or JOB_NOT_FOUND."""
        a = self.ctx.jobs.visible(job_id)
        if a is not None:
            if not visible_to(a.job, principal):
                raise JobNotFound(job_id)
            return a.row
        row = await self.ctx.store.get_job(job_id)
        if row is None or not visible_to(row.job, principal):
            raise JobNotFound(job_id)
        return row

    async def status(self, job_id: str, principal: Principal) -> JobStatusResponse:
        """``GET /v2/tasks/{id}``; JOB_NOT_FOUND for unknown ids and other tenants' jobs."""
        row = await self.lookup(job_id, principal)
        if row.job.status is JobStatus.QUEUED:
            await self.ctx.cluster.settled()  # explained by the model as of now
        return self.response(row, self.ctx.jobs.visible(job_id))

    async def list_jobs(
        self, flt: JobFilter, *, limit: int, cursor: int | None, principal: Principal
    ) -> JobList:
        """``GET /v2/tasks``: newest first; tenants see only their own jobs."""
        if not principal.operator and principal.kind == "client":
            flt = JobFilter(flt.status, flt.priority, flt.session_id, principal.tenant, flt.model)
        page = await self.ctx.store.list_jobs(flt, limit=limit, before=cursor)
        items = []
        for row in page.rows:
            a = self.ctx.jobs.visible(row.job.job_id)
            items.append(self.response(row if a is None else a.row, a))
        nxt = None if page.next_cursor is None else str(page.next_cursor)
        return JobList(items, nxt)
