"""The scheduling loop adds no delay to a job that arrives at a quiet daemon (the debounce
only coalesces bursts), and every change a route made is in the model before it answers
(read your own writes, even while a policy call holds the model frozen)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from orchestrator_core import PoolRegistration, TaskSubmitRequest
from orchestratord import MemoryStore, Orchestrator, Principal
from orchestratord.testing import (
    RecordingPoolAgentClient,
    ScriptedWorkerClient,
    WorkerScript,
    make_config,
    pool_registration,
    wait_for,
)

WHO = Principal("anonymous")


def _orch(debounce_s: float) -> Orchestrator:
    return Orchestrator(
        make_config(),
        store=MemoryStore(),
        worker_client=ScriptedWorkerClient(WorkerScript(tokens=["a"])),
        pool_client=RecordingPoolAgentClient(),
        debounce_s=debounce_s,
    )


async def test_a_job_at_a_quiet_daemon_is_dispatched_without_the_debounce() -> None:
    orch = _orch(debounce_s=2.0)
    await orch.start()
    try:
        orch.fleet.register(PoolRegistration.parse(pool_registration()), WHO)
        await asyncio.sleep(2.5)  # the registration's own pass and its debounce are over
        t0 = time.monotonic()
        req = TaskSubmitRequest(model="m1", prompt="p", max_tokens=1)
        job_id = (await orch.admission.submit(req, principal=WHO, correlation_id="c")).job_id
        await wait_for(lambda: job_id not in orch.active, timeout_s=5)
        assert time.monotonic() - t0 < 1.0  # not held back by the 2 s debounce
    finally:
        await orch.stop()


async def test_changes_made_while_a_policy_call_runs_are_in_the_model_before_the_answer() -> None:
    orch = _orch(debounce_s=0)
    await orch.start()
    release = threading.Event()
    scheduler = orch.scheduling.scheduler
    decide = scheduler.schedule

    def slow(snapshot: Any) -> Any:  # a policy call that takes its time (in its thread)
        release.wait(5)
        return decide(snapshot)

    scheduler.schedule = slow  # type: ignore[method-assign]
    try:
        cluster = orch.ctx.cluster
        orch.ctx.changed()  # a pass starts and holds the model frozen
        await wait_for(lambda: cluster.is_frozen)
        orch.fleet.register(PoolRegistration.parse(pool_registration()), WHO)
        assert cluster.pool("pool-a") is None  # deferred until the call returns
        req = TaskSubmitRequest(model="m1", prompt="p", max_tokens=1)
        submit = asyncio.ensure_future(
            orch.admission.submit(req, principal=WHO, correlation_id="c")
        )
        await asyncio.sleep(0.1)
        assert not submit.done()  # the 202 waits until the job is in the model
        release.set()
        reply = await asyncio.wait_for(submit, 5)
        assert cluster.pool("pool-a") is not None
        assert reply.queue_position == 0 or reply.job_id not in orch.active
    finally:
        release.set()
        scheduler.schedule = decide  # type: ignore[method-assign]
        await orch.stop()
