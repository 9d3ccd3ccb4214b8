"""Property: whatever the interleaving of worker tokens, metrics, worker failures, client
cancels and timeouts, a job's SSE stream is ``queued``, then at most one ``started``, then
tokens and metrics, then exactly one terminal ``end`` or ``error`` — ids 1..n without gaps,
nothing after the terminal event, the store holding exactly what was published, and the
job's final status matching its terminal event."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orchestrator_core import JobStatus, PoolRegistration, TaskSubmitRequest
from orchestratord import MemoryStore, Orchestrator, SqliteStore, Store
from orchestratord.auth import Principal
from orchestratord.testing import RecordingPoolAgentClient, make_config, pool_registration
from orchestratord.workers import ExecuteRequest, WorkerEvent, WorkerLost, WorkerUnreachable

ACTIONS = st.lists(
    st.sampled_from(
        [
            "token",
            "token",
            "token",
            "metrics",
            "end",
            "error",
            "lost",
            "unreachable",
            "cancel",
            "timeout",
            "yield",
        ]
    ),
    min_size=1,
    max_size=25,
)


class ControlledWorkerClient:
    """A simulated worker whose every step is fed by the test through a queue."""

    def __init__(self) -> None:
        self.steps: asyncio.Queue[str] = asyncio.Queue()
        self.executions = 0

    async def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        self.executions += 1
        first = await self.steps.get()
        if first == "unreachable":
            raise WorkerUnreachable("test: unreachable")
        yield WorkerEvent("started", {"job_id": request.job_id})
        n = 0
        step = first
        while True:
            if step == "token":
                yield WorkerEvent("token", {"i": n, "t": f"t{n}"})
                n += 1
            elif step == "metrics":
                yield WorkerEvent("metrics", {"tokens": n})
            elif step == "end":
                yield WorkerEvent("end", {"tokens": n, "finish_reason": "length"})
                return
            elif step in ("error", "cancelled"):
                code = "CANCELLED" if step == "cancelled" else "WORKER_FAILED"
                yield WorkerEvent("error", {"code": code, "message": "test"})
                return
            elif step in ("lost", "unreachable"):
                raise WorkerLost("test: lost")
            step = await self.steps.get()

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        self.steps.put_nowait("cancelled")

    async def aclose(self) -> None:
        return None


async def scenario(actions: list[str], store: Store | None = None) -> dict[str, Any]:
    config = make_config(
        retry={"base_delay_s": 0.0, "max_delay_s": 0.0, "max_attempts": 3},
        timeout={"cancel_deadline_s": 0.05, "reconnect_grace_s": 1.0},
    )
    worker = ControlledWorkerClient()
    store = store if store is not None else MemoryStore()
    orch = Orchestrator(
        config,
        store=store,
        worker_client=worker,
        pool_client=RecordingPoolAgentClient(),
        debounce_s=0,
    )
    await orch.start()
    try:
        who = Principal("anonymous")
        orch.fleet.register(PoolRegistration.parse(pool_registration()), who)
        req = TaskSubmitRequest(model="m1", prompt="p", max_tokens=100)
        job_id = (await orch.admission.submit(req, principal=who, correlation_id="c")).job_id
        a = orch.active[job_id]
        stops = []
        for action in actions:
            if action in ("cancel", "timeout"):
                stops.append(asyncio.create_task(orch.lifecycle.stop_job(a, action)))
            elif action != "yield":
                worker.steps.put_nowait(action)
            for _ in range(3):
                await asyncio.sleep(0)
        # Finish whatever is left: the worker ends, and a job still waiting is cancelled.
        worker.steps.put_nowait("end")
        for _ in range(200):
            if a.terminal_sent:
                break
            await asyncio.sleep(0.001)
            if not a.terminal_sent and worker.steps.empty():
                worker.steps.put_nowait("end")
        if not a.terminal_sent:
            await orch.lifecycle.stop_job(a, "cancel")
        await asyncio.gather(*stops)
        stored = await store.events_after(job_id, 0)
        row = await store.get_job(job_id)
        return {"events": list(a.stream.events), "stored": stored, "row": row}
    finally:
        await orch.stop()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(actions=ACTIONS)
def test_sse_stream_order_and_exactly_one_terminal_event(actions: list[str]) -> None:
    check(asyncio.run(scenario(actions)))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(actions=ACTIONS)
def test_the_same_with_sqlite_where_commits_really_interleave(actions: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check(asyncio.run(scenario(actions, SqliteStore(Path(tmp) / "p.sqlite3"))))


def check(out: dict[str, Any]) -> None:
    """The invariants of the module docstring."""
    events = out["events"]
    kinds = [e.kind for e in events]
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert kinds[0] == "queued"
    terminals = [i for i, k in enumerate(kinds) if k in ("end", "error")]
    assert terminals == [len(kinds) - 1], kinds  # exactly one, and it is last
    assert kinds.count("started") <= 1
    if "token" in kinds or "metrics" in kinds:
        assert "started" in kinds
        first_payload = min(i for i, k in enumerate(kinds) if k in ("token", "metrics"))
        assert kinds.index("started") < first_payload
    assert set(kinds[1:-1]) <= {"started", "token", "metrics"}
    tokens = [e.payload()["i"] for e in events if e.kind == "token"]
    assert tokens == list(range(len(tokens)))
    assert out["stored"] == events  # everything published is stored, nothing more
    row = out["row"]
    terminal = events[-1]
    if terminal.kind == "end":
        assert row.job.status is JobStatus.COMPLETED
        assert terminal.payload()["tokens"] == len(tokens) == row.tokens
    else:
        assert row.job.status in (JobStatus.FAILED, JobStatus.CANCELLED)
        assert terminal.payload()["code"] == str(row.job.error_code)
    assert row.job.prompt is None
