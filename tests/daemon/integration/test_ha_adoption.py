"""A leader on PostgreSQL takes the jobs other daemons stored even when their note (NOTIFY)
never reached it: its sweep finds them in the database (real PostgreSQL)."""

from __future__ import annotations

import time

import pytest
from orchestrator_core import Job, JobParams
from orchestratord import Orchestrator, PostgresStore
from orchestratord.services.events import EventWriter
from orchestratord.store import JobRow
from orchestratord.testing import (
    RecordingPoolAgentClient,
    ScriptedWorkerClient,
    make_config,
    wait_for,
)

pytestmark = pytest.mark.asyncio


async def test_the_leader_adopts_a_stored_job_whose_note_was_lost(postgres_dsn: str) -> None:
    config = make_config(persistence={"backend": "postgres", "postgres_dsn": postgres_dsn})
    orch = Orchestrator(
        config,
        store=PostgresStore(postgres_dsn),
        worker_client=ScriptedWorkerClient(),
        pool_client=RecordingPoolAgentClient(),
    )
    await orch.start()
    other = PostgresStore(postgres_dsn)  # a follower that stored a job, and no note
    await other.open()
    try:
        await wait_for(lambda: orch.roles.recovered, timeout_s=10)  # recovery is over
        now = time.time()
        job = Job(
            job_id="job-from-a-follower",
            model_ref="m1",
            prompt="p",
            params=JobParams(max_tokens=2),
            created_at=now,
            queued_at=now,
        )
        queued = EventWriter.queued_event(job.job_id, 0, "m1")
        await other.commit(jobs=[JobRow(job=job, timeout_s=60.0)], events=[queued], unfenced=True)
        await wait_for(lambda: orch.ctx.jobs.get(job.job_id) is not None, timeout_s=10)
        assert orch.ctx.cluster.state.get_job(job.job_id) is not None  # queued by the leader
    finally:
        await other.close()
        await orch.stop()
