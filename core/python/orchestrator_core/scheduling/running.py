"""RunningJobs: the jobs dispatched and not finished, and where they run.

A job counts here from its dispatch (or its restoration after a restart) until the daemon
says it finished. The fleet reads it to know a worker's own load, which stays exact between
heartbeats; the ids of recently finished jobs are remembered so that a heartbeat sent before
a job's end, still showing it, does not make its worker look busy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from orchestrator_core.jobs import Job

__all__ = ["RunningJob", "RunningJobs"]

_RECENT_FINISHED = 4096  # finished job ids remembered to recognise reports sent before the end
_NONE: frozenset[str] = frozenset()


@dataclass(slots=True)
class RunningJob:
    """A running job: its worker, tenant (``""``: none) and canonical model."""

    worker_id: str
    tenant: str
    model_ref: str
    job: Job


class RunningJobs:
    """Running jobs by id and by worker; O(1) per change."""

    def __init__(self) -> None:
        self._running: dict[str, RunningJob] = {}
        self._on: dict[str, set[str]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    def start(self, job: Job, tenant: str, model_ref: str, worker_id: str) -> None:
        """``job`` runs on ``worker_id`` from now on."""
        self._running[job.job_id] = RunningJob(worker_id, tenant, model_ref, job)
        self._on.setdefault(worker_id, set()).add(job.job_id)

    def finish(self, job_id: str) -> RunningJob | None:
        """``job_id`` ended; returns its record, or ``None`` if it was not running."""
        run = self._running.pop(job_id, None)
        if run is None:
            return None
        self._finished[job_id] = None
        if len(self._finished) > _RECENT_FINISHED:
            self._finished.popitem(last=False)
        on = self._on.get(run.worker_id)
        if on is not None:
            on.discard(job_id)
            if not on:
                del self._on[run.worker_id]
        return run

    def get(self, job_id: str) -> RunningJob | None:
        """The running job with this id, or ``None``."""
        return self._running.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._running

    def __len__(self) -> int:
        return len(self._running)

    def on_worker(self, worker_id: str) -> Collection[str]:
        """Ids of the jobs running on a worker (a live set: copy it to keep it)."""
        return self._on.get(worker_id, _NONE)

    def recently_finished(self, job_id: str) -> bool:
        """Whether ``job_id`` is among the last few thousand jobs that finished."""
        return job_id in self._finished
