"""What simulated engines ran, for tests: ``GET /sim/stats`` (a simulator's control route).

A :class:`JobLedger` records every *run* — one admitted request of one job on one engine —
with when it started, when it ended and how. Runs are grouped by job id, so a test can check
the engine's side of a story: "the client went away and the engine stopped generating within
a second", "no job ever ran twice at the same time". Each engine keeps a ledger; a ledger may
have a ``parent`` that sees every run too (a simulated pool's ledger gathers its engines'
runs, so its ``max_concurrent`` counts runs of one job id on *different* engines at once).

The JSON form (:meth:`JobLedger.snapshot`)::

    {"counters": {"executions", "active", "max_active", "max_concurrent_same_job",
                  "completed", "cancelled", "disconnected", "failed", "crashed",
                  "refused", "prompt_tokens", "completion_tokens"},
     "jobs": {job_id: {"executions", "active", "max_concurrent",
                       "started_at", "ended_at", "outcome",      (of the latest run)
                       "runs": [JobRun.to_json(), ...]}}}

Times are Unix seconds (``time.time()``), comparable between processes on one machine.
Outcomes: ``running``, ``completed`` (ended normally), ``cancelled`` (by ``POST /cancel``),
``disconnected`` (the HTTP client closed the stream or connection first), ``failed`` (an
``error_after_tokens`` fault), ``crashed`` (a crash fault, or the engine was killed).
``refused`` counts requests answered 503/409 (no run). The ledger keeps the latest
:data:`MAX_JOBS` job ids (finished ones are forgotten first) and the latest
:data:`MAX_RUNS_PER_JOB` runs of each.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["MAX_JOBS", "MAX_RUNS_PER_JOB", "JobLedger", "JobRun", "Outcome"]

MAX_JOBS = 10_000
"""Job ids a ledger remembers."""
MAX_RUNS_PER_JOB = 100
"""Runs a ledger remembers per job id."""

Outcome = Literal["running", "completed", "cancelled", "disconnected", "failed", "crashed"]
"""How a run ended (``running`` until it does)."""

_ENDINGS: tuple[str, ...] = ("completed", "cancelled", "disconnected", "failed", "crashed")


@dataclass(slots=True, eq=False)
class JobRun:
    """One run of one job on one engine.

    ``job_id`` is the ledger's key: the native job id; for an OpenAI request (which has no
    job id) its ``X-Correlation-Id`` when it sent one, else the engine's ``request_id``.
    ``kind`` is ``completion`` or ``chat``; ``protocol`` ``llorch`` or ``openai``.
    """

    job_id: str
    worker_id: str
    protocol: str
    kind: str
    request_id: str
    correlation_id: str | None
    prompt_tokens: int
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    outcome: Outcome = "running"
    completion_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "job_id": self.job_id,
            "worker_id": self.worker_id,
            "protocol": self.protocol,
            "kind": self.kind,
            "request_id": self.request_id,
            "correlation_id": self.correlation_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(slots=True, eq=False)
class _JobEntry:
    runs: deque[JobRun] = field(default_factory=lambda: deque(maxlen=MAX_RUNS_PER_JOB))
    executions: int = 0
    active: int = 0
    max_concurrent: int = 0

    def to_json(self) -> dict[str, Any]:
        last = self.runs[-1]
        return {
            "executions": self.executions,
            "active": self.active,
            "max_concurrent": self.max_concurrent,
            "started_at": last.started_at,
            "ended_at": last.ended_at,
            "outcome": last.outcome,
            "runs": [run.to_json() for run in self.runs],
        }


class JobLedger:
    """Runs and counters of one engine (or, as a ``parent``, of several). See the module
    docstring."""

    def __init__(self, *, parent: JobLedger | None = None) -> None:
        self.parent = parent
        self._jobs: OrderedDict[str, _JobEntry] = OrderedDict()
        self._active = 0
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "executions",
                "active",
                "max_active",
                "max_concurrent_same_job",
                *_ENDINGS,
                "refused",
                "prompt_tokens",
                "completion_tokens",
            ),
            0,
        )

    def start(self, run: JobRun) -> None:
        """Record that ``run`` started (it is ``running`` until :meth:`finish`)."""
        entry = self._jobs.get(run.job_id)
        if entry is None:
            entry = self._jobs[run.job_id] = _JobEntry()
            self._forget_old()
        else:
            self._jobs.move_to_end(run.job_id)
        entry.runs.append(run)
        entry.executions += 1
        entry.active += 1
        entry.max_concurrent = max(entry.max_concurrent, entry.active)
        c = self.counters
        c["executions"] += 1
        c["active"] += 1
        c["max_active"] = max(c["max_active"], c["active"])
        c["max_concurrent_same_job"] = max(c["max_concurrent_same_job"], entry.max_concurrent)
        c["prompt_tokens"] += run.prompt_tokens
        if self.parent is not None:
            self.parent.start(run)

    def finish(self, run: JobRun, outcome: Outcome, completion_tokens: int) -> None:
        """Record how ``run`` ended (once; later calls are ignored)."""
        if run.outcome != "running" or outcome == "running":
            return
        run.ended_at = time.time()
        run.outcome = outcome
        run.completion_tokens = completion_tokens
        self._finished(run)

    def _finished(self, run: JobRun) -> None:
        entry = self._jobs.get(run.job_id)
        if entry is not None:
            entry.active -= 1
        c = self.counters
        c["active"] -= 1
        c[run.outcome] += 1
        c["completion_tokens"] += run.completion_tokens
        if self.parent is not None:
            self.parent._finished(run)

    def refused(self) -> None:
        """Count a request refused before it ran (503, 409)."""
        self.counters["refused"] += 1
        if self.parent is not None:
            self.parent.refused()

    def runs(self, job_id: str) -> list[JobRun]:
        """The remembered runs of ``job_id``, oldest first."""
        entry = self._jobs.get(job_id)
        return list(entry.runs) if entry is not None else []

    def snapshot(self, job_ids: Collection[str] | None = None) -> dict[str, Any]:
        """The JSON form (module docstring); ``job_ids`` limits ``jobs`` to those ids."""
        chosen = self._jobs if job_ids is None else [j for j in job_ids if j in self._jobs]
        return {
            "counters": dict(self.counters),
            "jobs": {job_id: self._jobs[job_id].to_json() for job_id in chosen},
        }

    def _forget_old(self) -> None:
        while len(self._jobs) > MAX_JOBS:
            oldest_done = next((j for j, e in self._jobs.items() if e.active == 0), None)
            if oldest_done is None:
                return
            del self._jobs[oldest_done]
