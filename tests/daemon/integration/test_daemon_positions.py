"""Queue positions shown to clients are the order the scheduler dispatches in.

Regression: the daemon once kept a second model of the queue for its views; after
``PUT /v2/scheduler`` switched ``priority`` to ``fifo``, ``GET /v2/tasks/{id}`` reported
positions [1, 2, 0] for three queued jobs while the scheduler dispatched them [0, 1, 2].
Here the truth is what a worker actually receives, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from orchestrator_core import PoolRegistration, TaskSubmitRequest
from orchestratord import MemoryStore, Orchestrator, Principal, create_app
from orchestratord.services.policies import SchedulerUpdate
from orchestratord.testing import (
    RecordingPoolAgentClient,
    make_config,
    pool_registration,
    running_app,
    wait_for,
)
from orchestratord.workers import ExecuteRequest, WorkerEvent


class GateWorkerClient:
    """A simulated worker that records the jobs it receives, in order, and ends each one
    when the test opens its gate (or at once when ``hold`` is False)."""

    def __init__(self, *, hold: bool) -> None:
        self.hold = hold
        self.received: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        self.received.append(request.job_id)
        gate = self.gates.setdefault(request.job_id, asyncio.Event())
        yield WorkerEvent("started", {"job_id": request.job_id})
        if self.hold:
            await gate.wait()
        yield WorkerEvent("end", {"tokens": 0, "finish_reason": "stop"})

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        self.gates.setdefault(job_id, asyncio.Event()).set()

    async def aclose(self) -> None:
        return None


async def _positions(client: Any, ids: list[str]) -> list[int | None]:
    out = []
    for job_id in ids:
        r = await client.get(f"/v2/tasks/{job_id}")
        assert r.status_code == 200, r.text
        out.append(r.json()["queue_position"])
    return out


async def test_positions_follow_the_scheduler_after_a_policy_swap() -> None:
    worker = GateWorkerClient(hold=False)
    config = make_config(scheduler={"policy": "priority"}, heartbeat={"interval_s": 30.0})
    app = create_app(
        config,
        store=MemoryStore(),
        worker_client=worker,
        pool_client=RecordingPoolAgentClient(),
    )
    async with running_app(app) as client:
        ids = []
        for priority in ("batch", "batch", "interactive"):
            body = {"model": "m1", "prompt": "p", "max_tokens": 4, "priority": priority}
            r = await client.post("/v2/tasks", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["job_id"])
        assert await _positions(client, ids) == [1, 2, 0]

        r = await client.put("/v2/scheduler", json={"policy": "fifo"})
        assert r.status_code == 200, r.text
        shown = await _positions(client, ids)
        assert shown == [0, 1, 2]

        # The truth: one single-slot worker receives the jobs in the scheduler's order.
        r = await client.post("/v2/pools/register", json=pool_registration())
        assert r.status_code == 200, r.text
        await wait_for(lambda: len(worker.received) == 3)
        by_position = [job_id for _, job_id in sorted(zip(shown, ids, strict=True))]
        assert worker.received == by_position


# -- the same property under every interleaving -----------------------------------------------

POLICIES = ("priority", "fifo", "fair-share")


class PositionsMachine(RuleBasedStateMachine):
    """Submits, dispatches (one job at a time on a single-slot worker), cancels, time passing
    (batch promotion) and policy swaps, in any order. After every step the positions the API
    shows are 0..n-1 over the queued jobs, and whenever the worker frees up, the job it
    receives next is the one the API showed at position 0."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 1_000.0
        self.worker = GateWorkerClient(hold=True)
        config = make_config(
            scheduler={"policy": "priority"},
            queue={"promote_after_s": 30.0},
            heartbeat={"interval_s": 3600.0, "max_clock_skew_s": 10_000_000.0},
            tenants=[{"tenant_id": "a", "weight": 1}, {"tenant_id": "b", "weight": 3}],
        )
        self.orch = Orchestrator(
            config,
            store=MemoryStore(),
            worker_client=self.worker,
            pool_client=RecordingPoolAgentClient(),
            clock=lambda: self.now,
            debounce_s=0,
        )
        self.who = Principal("anonymous")
        self.queued: list[str] = []
        self.running: str | None = None
        self.seen = 0
        self.pool = False
        self.run(self.orch.start())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def settle(self) -> str | None:
        """Let the daemon act; returns the job the worker received meanwhile, if any."""
        calm = 0
        for _ in range(2000):
            self.run(asyncio.sleep(0.0002))
            quiet = self.orch.scheduling.idle and not self.orch.ctx.cluster.is_frozen
            calm = calm + 1 if quiet else 0
            if calm >= 5:
                break
        received = self.worker.received[self.seen :]
        assert len(received) <= 1, "a single-slot worker received two jobs at once"
        self.seen = len(self.worker.received)
        if not received:
            return None
        assert self.running is None, "a job was dispatched to a busy worker"
        self.queued.remove(received[0])
        self.running = received[0]
        return received[0]

    def positions(self) -> dict[str, int | None]:
        return {
            job_id: self.run(self.orch.views.status(job_id, self.who)).queue_position
            for job_id in self.queued
        }

    def head(self) -> str | None:
        return next((j for j, p in self.positions().items() if p == 0), None)

    @rule(priority=st.sampled_from(["interactive", "batch"]), tenant=st.sampled_from(["a", "b"]))
    def submit(self, priority: str, tenant: str) -> None:
        req = TaskSubmitRequest(model="m1", prompt="p", max_tokens=4, priority=priority)
        who = Principal("client", tenant=tenant)
        reply = self.run(self.orch.admission.submit(req, principal=who, correlation_id="c"))
        self.queued.append(reply.job_id)
        self.settle()

    @rule()
    def free_the_worker(self) -> None:
        """The pool comes (first time) or the running job ends: the worker takes the head."""
        expected = self.head()
        if not self.pool:
            self.orch.fleet.register(PoolRegistration.parse(pool_registration()), self.who)
            self.pool = True
        elif self.running is not None:
            job_id, self.running = self.running, None
            self.worker.gates[job_id].set()
            self.run(wait_for(lambda: job_id not in self.orch.active, 2.0))
        got = self.settle()
        if self.running is None:
            assert expected is None, "a queued job waits although the worker is free"
        else:
            assert got == expected

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.queued))
        self.run(self.orch.lifecycle.stop_job(self.orch.active[job_id], "cancel"))
        self.queued.remove(job_id)
        self.settle()

    @rule(seconds=st.sampled_from([1.0, 20.0, 40.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.orch.scheduling.kick()
        self.settle()

    @rule(policy=st.sampled_from(POLICIES))
    def swap(self, policy: str) -> None:
        self.run(self.orch.scheduling.swap(SchedulerUpdate(policy=policy)))
        self.settle()

    @invariant()
    def positions_are_0_to_n(self) -> None:
        shown = list(self.positions().values())
        assert all(p is not None for p in shown)
        assert sorted(shown) == list(range(len(shown)))  # type: ignore[type-var]

    def teardown(self) -> None:
        for gate in self.worker.gates.values():
            gate.set()
        self.run(self.orch.stop())
        self.loop.close()


PositionsMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPositions = PositionsMachine.TestCase
