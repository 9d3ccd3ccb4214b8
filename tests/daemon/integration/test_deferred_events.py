"""Token and metrics events are published at once and stored with the terminal event (one
durable write per lifecycle step, not one row per token); a finished job's events are all
stored; after a crash mid-stream the terminal event is numbered past any id a client holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from orchestrator_core import PoolRegistration, TaskSubmitRequest
from orchestratord import MemoryStore, Orchestrator, Principal
from orchestratord.services.events import LOST_EVENTS_GAP
from orchestratord.testing import RecordingPoolAgentClient, make_config, pool_registration, wait_for
from orchestratord.workers import ExecuteRequest, WorkerEvent


class StepWorker:
    """A simulated worker: started, then a token per ``go`` put on its queue, then end."""

    def __init__(self) -> None:
        self.go: asyncio.Queue[str] = asyncio.Queue()

    async def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        yield WorkerEvent("started", {"job_id": request.job_id})
        i = 0
        while await self.go.get() == "token":
            yield WorkerEvent("token", {"i": i, "t": f"t{i}"})
            i += 1
        yield WorkerEvent("end", {"tokens": i, "finish_reason": "length"})

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _orch(store: MemoryStore, worker: StepWorker) -> Orchestrator:
    config = make_config(retry={"max_attempts": 3})
    return Orchestrator(
        config,
        store=store,
        worker_client=worker,
        pool_client=RecordingPoolAgentClient(),
        debounce_s=0,
    )


async def _running_job(orch: Orchestrator, worker: StepWorker, tokens: int) -> str:
    who = Principal("anonymous")
    orch.fleet.register(PoolRegistration.parse(pool_registration()), who)
    req = TaskSubmitRequest(model="m1", prompt="p", max_tokens=100)
    job_id = (await orch.admission.submit(req, principal=who, correlation_id="c")).job_id
    for _ in range(tokens):
        worker.go.put_nowait("token")
    a = orch.active[job_id]
    await wait_for(lambda: a.row.tokens == tokens)
    await wait_for(lambda: a.stream.last_id == 2 + tokens)  # queued, started, tokens
    return job_id


async def test_tokens_are_published_at_once_and_stored_with_the_end() -> None:
    store, worker = MemoryStore(), StepWorker()
    orch = _orch(store, worker)
    await orch.start()
    try:
        job_id = await _running_job(orch, worker, tokens=5)
        stored = [e.kind for e in await store.events_after(job_id, 0)]
        assert stored == ["queued", "started", "token"]  # only the first token (with its row)
        worker.go.put_nowait("end")
        await wait_for(lambda: job_id not in orch.active)
        published = orch.ctx.jobs.stream_of(job_id).stream.events  # type: ignore[union-attr]
        assert await store.events_after(job_id, 0) == published  # all of it, in order
        assert [e.kind for e in published] == ["queued", "started", *["token"] * 5, "end"]
    finally:
        await orch.stop()


async def test_after_a_crash_mid_stream_the_terminal_id_passes_every_published_one() -> None:
    store, worker = MemoryStore(), StepWorker()
    first = _orch(store, worker)
    await first.start()
    job_id = await _running_job(first, worker, tokens=4)
    seen = first.active[job_id].stream.last_id  # what a client following the job holds
    await first.stop()  # the process dies: deferred tokens were never stored

    second = _orch(store, StepWorker())
    await second.start()  # recovery: tokens were relayed, so the job fails
    try:
        await wait_for(lambda: job_id not in second.active)
        events = await store.events_after(job_id, seen)  # a client resuming after `seen`
        assert [e.kind for e in events] == ["error"]
        assert events[0].payload()["code"] == "WORKER_FAILED"
        assert events[0].event_id > seen + LOST_EVENTS_GAP - 10
        live = second.ctx.jobs.stream_of(job_id)
        assert live is not None
        assert [e.event_id for e in live.stream.after(seen)] == [events[0].event_id]
    finally:
        await second.stop()
