"""The simulator's job ledger (``GET /sim/stats``): runs, counters, a parent seeing every
child's runs, and bounded memory."""

from __future__ import annotations

import pytest
from llorch_pool.sim import JobLedger, JobRun
from llorch_pool.sim import ledger as ledger_module


def run(job_id: str, worker_id: str = "w") -> JobRun:
    return JobRun(
        job_id=job_id,
        worker_id=worker_id,
        protocol="llorch",
        kind="completion",
        request_id=job_id,
        correlation_id=None,
        prompt_tokens=2,
    )


def test_a_parent_counts_one_job_running_on_two_engines_at_once() -> None:
    pool = JobLedger()
    a, b = JobLedger(parent=pool), JobLedger(parent=pool)
    first, second = run("j", "a"), run("j", "b")
    a.start(first)
    b.start(second)
    assert pool.snapshot()["jobs"]["j"]["active"] == 2
    a.finish(first, "completed", 5)
    a.finish(first, "cancelled", 9)  # once only
    b.finish(second, "disconnected", 1)
    job = pool.snapshot()["jobs"]["j"]
    assert (job["executions"], job["active"], job["max_concurrent"]) == (2, 0, 2)
    assert job["outcome"] == "disconnected"  # of the latest run
    assert [r["outcome"] for r in job["runs"]] == ["completed", "disconnected"]
    assert pool.counters["max_concurrent_same_job"] == 2
    assert (pool.counters["completed"], pool.counters["disconnected"]) == (1, 1)
    assert pool.counters["completion_tokens"] == 6
    assert a.snapshot()["jobs"]["j"]["max_concurrent"] == 1
    assert a.counters["completion_tokens"] == 5
    a.refused()
    assert (a.counters["refused"], pool.counters["refused"], b.counters["refused"]) == (1, 1, 0)
    assert first.ended_at is not None and first.ended_at >= first.started_at


def test_the_ledger_forgets_the_oldest_finished_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "MAX_JOBS", 3)
    book = JobLedger()
    running = run("old-but-running")
    book.start(running)
    for i in range(5):
        r = run(f"j{i}")
        book.start(r)
        book.finish(r, "completed", 1)
    assert list(book.snapshot()["jobs"]) == ["old-but-running", "j3", "j4"]
    assert book.snapshot(["j4", "nope"])["jobs"].keys() == {"j4"}
    assert book.counters["executions"] == 6
