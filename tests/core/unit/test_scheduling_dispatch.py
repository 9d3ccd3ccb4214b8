"""Which job goes first and to which worker: the queue order and the placement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from orchestrator_core import ErrorCode
from orchestrator_core.scheduling import (
    BuiltinScheduler,
    ClusterState,
    Dispatch,
    FairShareOrder,
    FifoOrder,
    MostVramFreePlacement,
    PriorityOrder,
    Reject,
    RoundRobinPlacement,
    Wait,
    iter_actions,
    validate_decision,
)
from orchestrator_core.testing import ClusterBuilder, cluster, make_job


def dispatches(state: ClusterState, now: float = 1000.0, **kw: object) -> list[tuple[str, str]]:
    """(job, worker) pairs of one cycle's decision, in order (the decision must be valid)."""
    snap = state.snapshot(now)
    decision = BuiltinScheduler(**kw).schedule(snap)  # type: ignore[arg-type]
    assert validate_decision(decision, snap) == []
    return [(a.job_id, a.worker_id) for a in iter_actions(decision) if isinstance(a, Dispatch)]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], ClusterBuilder]
    expected: list[tuple[str, str]]
    now: float = 1000.0


def one_worker(**kw: object) -> ClusterBuilder:
    return cluster(**kw).model("m", vram_gb=4).pool("p").gpu("g0").worker("w1", "m")  # type: ignore[arg-type]


ORDER_CASES = [
    Case(
        "interactive jobs go before batch jobs that arrived earlier",
        lambda: one_worker().job("b1", "m", priority="batch").job("i1", "m"),
        [("i1", "w1")],
        now=100.0,  # younger than the default promotion age (300 s)
    ),
    Case(
        "jobs of one priority go in arrival order",
        lambda: one_worker().job("i1", "m").job("i2", "m"),
        [("i1", "w1")],
    ),
    Case(
        "fifo ignores priority",
        lambda: one_worker(order=FifoOrder()).job("b1", "m", priority="batch").job("i1", "m"),
        [("b1", "w1")],
    ),
    Case(
        "a batch job older than the promotion age runs before later interactive jobs",
        lambda: (
            one_worker(order=PriorityOrder(promote_after_s=60))
            .job("b1", "m", priority="batch", queued_at=0)
            .job("i1", "m", queued_at=10)
        ),
        [("b1", "w1")],
        now=100.0,
    ),
    Case(
        "a batch job younger than the promotion age still waits for interactive jobs",
        lambda: (
            one_worker(order=PriorityOrder(promote_after_s=60))
            .job("b1", "m", priority="batch", queued_at=50)
            .job("i1", "m", queued_at=60)
        ),
        [("i1", "w1")],
        now=100.0,
    ),
    Case(
        "a promoted batch job still waits for interactive jobs that arrived before it",
        lambda: (
            one_worker(order=PriorityOrder(promote_after_s=60))
            .job("i0", "m", queued_at=0)
            .job("b1", "m", priority="batch", queued_at=5)
        ),
        [("i0", "w1")],
        now=100.0,
    ),
    Case(
        "a job whose model has no ready worker does not block a later job whose model has one",
        lambda: one_worker().model("x", vram_gb=99).job("x1", "x").job("m1", "m"),
        [("m1", "w1")],
    ),
    Case(
        "aliases resolve to the catalog model",
        lambda: (
            cluster()
            .model("llama-3-8b", vram_gb=6, aliases=["llama"])
            .pool("p")
            .gpu("g0")
            .worker("w1", "llama-3-8b")
            .job("j1", "llama")
        ),
        [("j1", "w1")],
    ),
    Case(
        "with fair share, a tenant's burst does not hold back another tenant's later job",
        lambda: (
            one_worker(order=FairShareOrder())
            .worker("w2", "m")
            .job("a1", "m", tenant="a")
            .job("a2", "m", tenant="a")
            .job("a3", "m", tenant="a")
            .job("b1", "m", tenant="b")
        ),
        [("a1", "w1"), ("b1", "w2")],
    ),
]


@pytest.mark.parametrize("case", ORDER_CASES, ids=[c.name for c in ORDER_CASES])
def test_queue_order(case: Case) -> None:
    assert dispatches(case.build().build(), case.now) == case.expected


PLACEMENT_CASES = [
    Case(
        "least-loaded picks the worker with the fewest active jobs per slot",
        lambda: (
            cluster()
            .model("m", vram_gb=4)
            .pool("p")
            .gpu("g0")
            .worker("w1", "m", slots=4, active=3)
            .gpu("g1")
            .worker("w2", "m", slots=4, active=1)
            .job("j1", "m")
        ),
        [("j1", "w2")],
    ),
    Case(
        "least-loaded breaks ties by most free VRAM",
        lambda: (
            cluster()
            .model("m", vram_gb=4)
            .pool("p")
            .gpu("g0", vram_gb=24)
            .worker("w1", "m")
            .gpu("g1", vram_gb=80)
            .worker("w2", "m")
            .job("j1", "m")
        ),
        [("j1", "w2")],
    ),
    Case(
        "most-vram-free prefers free VRAM over load",
        lambda: (
            cluster(placement=MostVramFreePlacement())
            .model("m", vram_gb=4)
            .pool("p")
            .gpu("g0", vram_gb=24)
            .worker("w1", "m", slots=4)
            .gpu("g1", vram_gb=80)
            .worker("w2", "m", slots=4, active=3)
            .job("j1", "m")
        ),
        [("j1", "w2")],
    ),
    Case(
        "only ready workers get jobs: busy, starting, draining and failed ones do not",
        lambda: (
            cluster()
            .model("m", vram_gb=1)
            .pool("p")
            .gpu("g0")
            .worker("busy", "m", status="busy")
            .worker("starting", "m", status="starting")
            .worker("draining", "m", status="draining")
            .worker("failed", "m", status="failed")
            .worker("ready", "m")
            .job("j1", "m")
            .job("j2", "m")
        ),
        [("j1", "ready")],
    ),
    Case(
        "only workers with the job's model get it",
        lambda: (
            cluster()
            .model("m", vram_gb=1)
            .model("n", vram_gb=1)
            .pool("p")
            .gpu("g0")
            .worker("wn", "n")
            .worker("wm", "m")
            .job("j1", "m")
        ),
        [("j1", "wm")],
    ),
    Case(
        "workers of offline pools get no jobs",
        lambda: (
            cluster()
            .model("m", vram_gb=1)
            .pool("off", status="offline")
            .gpu("g0")
            .worker("w-off", "m")
            .job("j1", "m")
        ),
        [],
    ),
    Case(
        "degraded pools are used only when no online pool has a free worker",
        lambda: (
            cluster()
            .model("m", vram_gb=1)
            .pool("deg", status="degraded")
            .gpu("g0", vram_gb=80)
            .worker("w-deg", "m")
            .pool("ok")
            .gpu("g0", vram_gb=8)
            .worker("w-ok", "m")
            .job("j1", "m")
            .job("j2", "m")
        ),
        [("j1", "w-ok"), ("j2", "w-deg")],
    ),
    Case(
        "a worker with several slots takes several jobs in one cycle",
        lambda: (
            cluster()
            .model("m", vram_gb=1)
            .pool("p")
            .gpu("g0")
            .worker("w1", "m", slots=3, active=1)
            .jobs(4, "m")
        ),
        [("j0", "w1"), ("j1", "w1")],
    ),
    Case(
        "one cycle dispatches one job per free worker, in queue order",
        lambda: (
            cluster()
            .model("m", vram_gb=1)
            .model("n", vram_gb=1)
            .pool("p")
            .gpu("g0")
            .worker("wm", "m")
            .worker("wn", "n")
            .job("m1", "m")
            .job("m2", "m")
            .job("n1", "n")
        ),
        [("m1", "wm"), ("n1", "wn")],
    ),
]


@pytest.mark.parametrize("case", PLACEMENT_CASES, ids=[c.name for c in PLACEMENT_CASES])
def test_placement(case: Case) -> None:
    assert dispatches(case.build().build(), case.now) == case.expected


def test_round_robin_placement_rotates_between_identical_workers() -> None:
    state = (
        cluster(placement=RoundRobinPlacement())
        .model("m", vram_gb=1)
        .pool("p")
        .gpu("g0")
        .worker("w1", "m")
        .worker("w2", "m")
        .worker("w3", "m")
        .jobs(6, "m")
        .build()
    )
    used = []
    for t in range(6):
        now = 1000.0 + t
        decision = BuiltinScheduler().schedule(state.snapshot(now))
        first = next(a for a in iter_actions(decision) if isinstance(a, Dispatch))
        used.append(first.worker_id)
        # apply only the first dispatch, and let it finish, so exactly one worker is used
        state.job_dispatched(first.job_id, first.worker_id, now=now)
        state.job_finished(first.job_id, now=now)
    assert used == ["w1", "w2", "w3", "w1", "w2", "w3"]


def test_a_dispatch_explains_ordering_filter_score_and_runners_up() -> None:
    state = (
        cluster()
        .model("m", vram_gb=4)
        .pool("p")
        .gpu("g0", vram_gb=80)
        .worker("w1", "m")
        .gpu("g1", vram_gb=40)
        .worker("w2", "m")
        .job("j1", "m")
        .build()
    )
    decision = BuiltinScheduler().schedule(state.snapshot(1000.0))
    assert isinstance(decision, Dispatch)
    why = decision.explanation
    assert why["ordering"] == "priority"
    assert why["class"] == "interactive"
    assert why["filter"] == {"model_ref": "m", "pool_status": "online", "free_workers": 2}
    assert why["placement"] == "least-loaded"
    assert why["score"] == {"load": 0.0, "gpu_free_bytes": 76_000_000_000}
    assert [r["worker_id"] for r in why["runners_up"]] == ["w2"]


QUOTA_CASES = [
    Case(
        "with quota_action wait, a tenant at its running quota waits and others go ahead",
        lambda: (
            cluster(enforce_quotas=True)
            .tenant("a", max_running=1)
            .model("m", vram_gb=1)
            .pool("p")
            .gpu("g0")
            .worker("w1", "m")
            .worker("w2", "m")
            .worker("w3", "m")
            .job("a1", "m", tenant="a")
            .job("a2", "m", tenant="a")
            .job("b1", "m", tenant="b")
        ),
        [("a1", "w1"), ("b1", "w2")],
    ),
    Case(
        "quotas are not enforced outside platform mode",
        lambda: (
            cluster(enforce_quotas=False)
            .tenant("a", max_running=1)
            .model("m", vram_gb=1)
            .pool("p")
            .gpu("g0")
            .worker("w1", "m")
            .worker("w2", "m")
            .job("a1", "m", tenant="a")
            .job("a2", "m", tenant="a")
        ),
        [("a1", "w1"), ("a2", "w2")],
    ),
]


@pytest.mark.parametrize("case", QUOTA_CASES, ids=[c.name for c in QUOTA_CASES])
def test_quotas(case: Case) -> None:
    assert dispatches(case.build().build(), case.now) == case.expected


def test_a_tenant_already_at_its_quota_waits_until_one_of_its_jobs_finishes() -> None:
    state = (
        cluster(enforce_quotas=True)
        .tenant("a", max_running=1)
        .model("m", vram_gb=1)
        .pool("p")
        .gpu("g0")
        .worker("w1", "m")
        .worker("w2", "m")
        .job("a1", "m", tenant="a")
        .job("a2", "m", tenant="a")
        .build()
    )
    assert dispatches(state) == [("a1", "w1")]
    state.job_dispatched("a1", "w1", now=1000.0)
    decision = BuiltinScheduler().schedule(state.snapshot(1001.0))
    assert isinstance(decision, Wait)
    state.job_finished("a1", now=1002.0)
    assert dispatches(state, 1003.0) == [("a2", "w1")]


def test_with_quota_action_reject_a_tenant_over_quota_is_rejected_with_quota_exceeded() -> None:
    state = (
        cluster(enforce_quotas=True, quota_action="reject")
        .tenant("a", max_running=1)
        .model("m", vram_gb=1)
        .pool("p")
        .gpu("g0")
        .worker("w1", "m")
        .worker("w2", "m")
        .job("a1", "m", tenant="a")
        .job("a2", "m", tenant="a")
        .build()
    )
    snap = state.snapshot(1000.0)
    actions = iter_actions(BuiltinScheduler().schedule(snap))
    assert actions[0] == Dispatch("a1", "w1", "p")
    rejected = actions[1]
    assert isinstance(rejected, Reject)
    assert (rejected.job_id, rejected.code) == ("a2", ErrorCode.QUOTA_EXCEEDED)
    assert "quota of 1 running jobs" in rejected.message


def test_an_empty_queue_waits_with_reason_queue_empty() -> None:
    state = one_worker().build()
    decision = BuiltinScheduler().schedule(state.snapshot(1.0))
    assert decision == Wait("queue_empty", 1000)


def test_all_workers_busy_waits_with_reason_no_free_worker() -> None:
    state = one_worker().job("j1", "m").build()
    state.job_dispatched("j1", "w1", now=1.0)
    state.add_job(make_job("j2", "m", queued_at=1.0))
    decision = BuiltinScheduler().schedule(state.snapshot(2.0))
    assert isinstance(decision, Wait)
    assert decision.reason == "no_free_worker"
