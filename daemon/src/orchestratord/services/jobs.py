"""A live job (:class:`ActiveJob`) and the table of live and recently finished jobs.

An :class:`ActiveJob` is the daemon's runtime handle of one unfinished job: its stored row,
its in-memory SSE stream, its lock, its timers and its relay task. Where a job waits in the
queue, or runs, is *not* kept here: that is the cluster model's business
(:class:`~orchestratord.services.cluster.Cluster`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator_core import Job, JobStatus

from orchestratord.store import JobRow, StoredEvent
from orchestratord.streams import JobStream

__all__ = ["ActiveJob", "JobTable"]

_RECENT_STREAMS = 512


@dataclass(eq=False)
class ActiveJob:
    """A job the daemon is handling (not yet finished), with its stream and timers."""

    row: JobRow
    stream: JobStream
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: bool = True
    """Admission commit not done yet: not in the cluster model, not visible to anyone."""
    in_backoff: bool = False
    started_sent: bool = False
    terminal_sent: bool = False
    stopping: str | None = None
    """Why the job is being stopped (cancel, timeout, client_gone, dropped), once it is."""
    on_worker: tuple[str, str] | None = None
    """``(pool_id, worker_id)`` while a relay runs the job there."""
    relay: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    deadline_handle: asyncio.TimerHandle | None = None
    retry_handle: asyncio.TimerHandle | None = None
    grace_handle: asyncio.TimerHandle | None = None
    had_subscriber: bool = False
    explanation: dict[str, Any] | None = None
    last_reserved: int = 0
    """Highest event id handed out (published, or committing in ``inflight``)."""
    inflight: deque[tuple[asyncio.Future[None], StoredEvent | None]] = field(default_factory=deque)
    """Events being committed, in id order; each is published once it and all before it are
    committed."""
    closing: bool = False
    """The job is ending: no more non-terminal events."""
    write_failed: bool = False
    unstored: list[StoredEvent] = field(default_factory=list)
    """Deferred events published but not stored yet: they go with the terminal event."""
    events_lost: bool = False
    """Recovered after a crash with deferred events that were never stored: the terminal
    event's id skips past theirs."""

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
            and not self.closing
            and self.job.status is JobStatus.QUEUED
        )

    def cancel_timers(self) -> None:
        """Cancel the deadline, retry and reconnect-grace timers."""
        for handle in (self.deadline_handle, self.retry_handle, self.grace_handle):
            if handle is not None:
                handle.cancel()


class JobTable:
    """Live jobs by id, and the last finished ones (their streams serve late followers)."""

    def __init__(self, recent: int = _RECENT_STREAMS) -> None:
        self.active: dict[str, ActiveJob] = {}
        self.recent: OrderedDict[str, ActiveJob] = OrderedDict()
        self._recent_max = recent

    def __iter__(self) -> Iterator[ActiveJob]:
        return iter(list(self.active.values()))

    def get(self, job_id: str) -> ActiveJob | None:
        """The live job ``job_id``, or ``None``."""
        return self.active.get(job_id)

    def visible(self, job_id: str) -> ActiveJob | None:
        """The live job ``job_id`` once its admission is committed, or ``None``."""
        a = self.active.get(job_id)
        return None if a is None or a.pending else a

    def add(self, a: ActiveJob) -> None:
        """Track a new live job."""
        self.active[a.job_id] = a

    def discard(self, job_id: str) -> None:
        """Forget a job whose admission failed."""
        self.active.pop(job_id, None)

    def retire(self, a: ActiveJob) -> None:
        """``a`` finished: keep its stream among the recent ones."""
        self.active.pop(a.job_id, None)
        self.recent[a.job_id] = a
        while len(self.recent) > self._recent_max:
            self.recent.popitem(last=False)

    def stream_of(self, job_id: str) -> ActiveJob | None:
        """The live (or recently finished) job with its in-memory stream."""
        return self.active.get(job_id) or self.recent.get(job_id)

    def running(self) -> int:
        """Jobs running on a worker now."""
        return sum(1 for a in self.active.values() if a.job.status is JobStatus.RUNNING)
