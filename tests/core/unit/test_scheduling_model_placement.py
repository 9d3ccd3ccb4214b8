"""Starting workers where a model fits best, evicting idle ones, and giving up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from orchestrator_core import ErrorCode
from orchestrator_core.scheduling import (
    Action,
    BuiltinScheduler,
    Decision,
    Dispatch,
    EvictWorker,
    LfuEviction,
    LruEviction,
    ManualEviction,
    Reject,
    StartWorker,
    Wait,
    iter_actions,
    validate_decision,
)
from orchestrator_core.testing import ClusterBuilder, cluster, make_job


def decide(b: ClusterBuilder, now: float = 1000.0, **kw: object) -> Decision:
    snap = b.build().snapshot(now)
    decision = BuiltinScheduler(**kw).schedule(snap)  # type: ignore[arg-type]
    assert validate_decision(decision, snap) == []
    return decision


def brief(decision: Decision) -> list[tuple[str, ...]]:
    """Actions as short tuples, for tables."""
    out: list[tuple[str, ...]] = []
    for a in iter_actions(decision):
        if isinstance(a, StartWorker):
            out.append(("start", a.pool_id, a.gpu_id, a.model_ref))
        elif isinstance(a, EvictWorker):
            out.append(("evict", a.worker_id))
        elif isinstance(a, Reject):
            out.append(("reject", a.job_id, str(a.code)))
        elif isinstance(a, Wait):
            out.append(("wait", a.reason))
        else:
            out.append(("dispatch", a.job_id, a.worker_id))
    return out


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], ClusterBuilder]
    expected: list[tuple[str, ...]]
    scheduler: dict[str, object] = field(default_factory=dict)
    now: float = 1000.0


def base() -> ClusterBuilder:
    return cluster().model("small", vram_gb=8).model("big", vram_gb=40).model("other", vram_gb=8)


CASES = [
    Case(
        "a model without a worker starts on the GPU where it fits best (least VRAM left)",
        lambda: (
            base()
            .pool("p")
            .gpu("g80", vram_gb=80)
            .gpu("g24", vram_gb=24)
            .gpu("g10", vram_gb=10, free_gb=6)
            .job("j1", "small")
        ),
        [("start", "p", "g24", "small")],
    ),
    Case(
        "a start goes to a degraded pool only when no online GPU fits",
        lambda: (
            base()
            .pool("deg", status="degraded")
            .gpu("g0", vram_gb=48)
            .pool("ok")
            .gpu("g0", vram_gb=80)
            .job("j1", "big")
        ),
        [("start", "ok", "g0", "big")],
    ),
    Case(
        "a degraded pool is used for a start when nothing online fits",
        lambda: (
            base()
            .pool("deg", status="degraded")
            .gpu("g0", vram_gb=48)
            .pool("ok")
            .gpu("g0", vram_gb=24)
            .job("j1", "big")
        ),
        [("start", "deg", "g0", "big")],
    ),
    Case(
        "offline pools never get a start",
        lambda: base().pool("off", status="offline").gpu("g0", vram_gb=80).job("j1", "small"),
        [("wait", "pools_unavailable")],
    ),
    Case(
        "a pool that lists its models only starts those",
        lambda: (
            base()
            .pool("p1", models=["other"])
            .gpu("g0", vram_gb=24)
            .pool("p2", models=["small"])
            .gpu("g0", vram_gb=80)
            .job("j1", "small")
        ),
        [("start", "p2", "g0", "small")],
    ),
    Case(
        "a starting worker counts as capacity: no second start for the same demand",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=80)
            .worker("w1", "small", status="starting")
            .job("j1", "small")
        ),
        [("wait", "no_free_worker")],
    ),
    Case(
        "when only idle workers block, the least recently used one is evicted (LRU)",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=16)
            .worker("old", "other", last_used_at=10)
            .worker("new", "other", last_used_at=20)
            .job("j1", "small")
        ),
        [("evict", "old"), ("start", "p", "g0", "small")],
    ),
    Case(
        "LFU evicts the least used worker even if it was used recently",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=16)
            .worker("busy-life", "other", last_used_at=10, jobs_completed=100)
            .worker("rarely", "other", last_used_at=20, jobs_completed=2)
            .job("j1", "small")
        ),
        [("evict", "rarely"), ("start", "p", "g0", "small")],
        {"eviction": LfuEviction()},
    ),
    Case(
        "eviction picks the GPU whose victims were used least recently",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .worker("recent", "other", last_used_at=500)
            .gpu("g1", vram_gb=8)
            .worker("stale", "other", last_used_at=5)
            .job("j1", "small")
        ),
        [("evict", "stale"), ("start", "p", "g1", "small")],
    ),
    Case(
        "several idle workers are evicted when one is not enough",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=40)
            .worker("a", "other", last_used_at=1)
            .worker("b", "other", last_used_at=2)
            .worker("c", "other", last_used_at=3)
            .worker("d", "other", last_used_at=4)
            .worker("e", "other", last_used_at=5)
            .job("j1", "big")
        ),
        [
            ("evict", "a"),
            ("evict", "b"),
            ("evict", "c"),
            ("evict", "d"),
            ("evict", "e"),
            ("start", "p", "g0", "big"),
        ],
    ),
    Case(
        "a busy worker is never evicted: the job waits",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .worker("w1", "other", status="busy")
            .job("j1", "small", queued_at=990)
        ),
        [("wait", "vram_busy")],
    ),
    Case(
        "a busy worker blocking a job that waited drain_after_s is drained, not evicted",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .worker("w1", "other", status="busy")
            .job("j1", "small", queued_at=900)
        ),
        [("wait", "draining")],
    ),
    Case(
        "manual eviction never evicts: the job waits",
        lambda: base().pool("p").gpu("g0", vram_gb=8).worker("w1", "other").job("j1", "small"),
        [("wait", "eviction_manual")],
        {"eviction": ManualEviction()},
    ),
    Case(
        "a worker used more recently than min_idle_s is not evicted",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .worker("w1", "other", last_used_at=990)
            .job("j1", "small")
        ),
        [("wait", "vram_busy")],
        {"eviction": LruEviction(min_idle_s=60), "drain_after_s": None},
    ),
    Case(
        "a model no pool could ever fit is rejected with NO_CAPACITY",
        lambda: (
            base()
            .model("huge", vram_gb=200)
            .pool("p")
            .gpu("g0", vram_gb=80)
            .job("j1", "huge")
            .job("j2", "huge")
        ),
        [("reject", "j1", "NO_CAPACITY"), ("reject", "j2", "NO_CAPACITY")],
    ),
    Case(
        "a model no pool can load is rejected with NO_CAPACITY",
        lambda: base().pool("p", models=["other"]).gpu("g0", vram_gb=80).job("j1", "small"),
        [("reject", "j1", "NO_CAPACITY")],
    ),
    Case(
        "a model nothing knows is rejected with MODEL_NOT_FOUND",
        lambda: base().pool("p").gpu("g0", vram_gb=80).job("j1", "mystery"),
        [("reject", "j1", "MODEL_NOT_FOUND")],
    ),
    Case(
        "with no pool registered yet, jobs wait instead of being rejected",
        lambda: base().job("j1", "small"),
        [("wait", "no_pools")],
    ),
    Case(
        "a model known only from a pool's list starts there (VRAM unknown)",
        lambda: cluster().pool("p", models=["pool-only"]).gpu("g0").job("j1", "pool-only"),
        [("start", "p", "g0", "pool-only")],
    ),
    Case(
        "a queue longer than a served model's slots scales out onto free VRAM",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .worker("w1", "small", status="busy")
            .gpu("g1", vram_gb=24)
            .job("j1", "small")
            .job("j2", "small")
        ),
        [("start", "p", "g1", "small")],
    ),
    Case(
        "a queue no longer than a served model's slots waits for its busy workers",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .worker("w1", "small", status="busy")
            .gpu("g1", vram_gb=24)
            .job("j1", "small")
        ),
        [("wait", "no_free_worker")],
    ),
    Case(
        "scale-out never evicts",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .worker("w1", "small", status="busy")
            .gpu("g1", vram_gb=8)
            .worker("idle", "other")
            .job("j1", "small")
            .job("j2", "small")
        ),
        [("wait", "no_free_worker")],
    ),
    Case(
        "scale-out can be turned off",
        lambda: (
            base()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .worker("w1", "small", status="busy")
            .gpu("g1", vram_gb=24)
            .job("j1", "small")
            .job("j2", "small")
        ),
        [("wait", "no_free_worker")],
        {"scale_out": False},
    ),
    Case(
        "two cold models in one cycle do not both take the same VRAM",
        lambda: base().pool("p").gpu("g0", vram_gb=10).job("j1", "small").job("j2", "other"),
        [("start", "p", "g0", "small")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_model_placement(case: Case) -> None:
    assert brief(decide(case.build(), case.now, **case.scheduler)) == case.expected


def test_the_next_cycle_does_not_start_a_second_worker_while_the_first_is_starting() -> None:
    state = base().pool("p").gpu("g0", vram_gb=80).gpu("g1", vram_gb=80).job("j1", "small").build()
    first = BuiltinScheduler().schedule(state.snapshot(1.0))
    assert brief(first) == [("start", "p", "g0", "small")]
    placeholder = state.apply(first, now=1.0)[0]
    second = BuiltinScheduler().schedule(state.snapshot(2.0))
    assert isinstance(second, Wait)
    # the pool answers with the worker id, which then becomes ready
    state.start_confirmed(placeholder, "w-new")
    state.mark_worker("w-new", "ready")
    third = BuiltinScheduler().schedule(state.snapshot(3.0))
    assert brief(third) == [("dispatch", "j1", "w-new")]


def test_a_failed_start_releases_its_reservation() -> None:
    state = base().pool("p").gpu("g0", vram_gb=8).job("j1", "small").build()
    placeholder = state.apply(BuiltinScheduler().schedule(state.snapshot(1.0)), now=1.0)[0]
    assert state.gpu_view("p", "g0").vram_free_bytes == 0  # type: ignore[union-attr]
    state.start_failed(placeholder)
    assert state.gpu_view("p", "g0").vram_free_bytes == 8 * 10**9  # type: ignore[union-attr]
    assert brief(BuiltinScheduler().schedule(state.snapshot(2.0))) == [
        ("start", "p", "g0", "small")
    ]


def test_a_start_explains_the_fit_and_the_runners_up() -> None:
    decision = decide(
        base()
        .pool("p")
        .gpu("g0", vram_gb=80)
        .gpu("g1", vram_gb=24)
        .gpu("g2", vram_gb=40)
        .job("j1", "small")
    )
    assert isinstance(decision, StartWorker)
    why = decision.explanation
    assert why["fit"] == "best-fit"
    assert why["need_vram_bytes"] == 8 * 10**9
    assert why["leftover_bytes"] == 16 * 10**9
    assert why["job_id"] == "j1"
    assert [(r["gpu_id"], r["leftover_bytes"]) for r in why["runners_up"]] == [
        ("g2", 32 * 10**9),
        ("g0", 72 * 10**9),
    ]


def test_an_eviction_explains_its_policy_and_what_it_makes_room_for() -> None:
    decision = decide(
        base()
        .pool("p")
        .gpu("g0", vram_gb=8)
        .worker("w1", "other", last_used_at=3)
        .job("j1", "small")
    )
    evict: Action = iter_actions(decision)[0]
    assert isinstance(evict, EvictWorker)
    assert evict.explanation["policy"] == "lru"
    assert evict.explanation["for_model"] == "small"
    assert evict.explanation["for_job"] == "j1"
    assert evict.explanation["last_used_at"] == 3


def test_a_rejection_for_no_capacity_says_how_much_was_needed() -> None:
    decision = decide(base().model("huge", vram_gb=200).pool("p").gpu("g0").job("j", "huge"))
    assert isinstance(decision, Reject)
    assert decision.code is ErrorCode.NO_CAPACITY
    assert decision.explanation["need_vram_bytes"] == 200 * 10**9
    assert decision.explanation["largest_gpu_bytes"] == 24 * 10**9


def run_hot_stream(drain_after_s: float | None, steps: int = 120) -> float | None:
    """One 10 GB GPU held by a worker of "hot", which always has two jobs queued; one job of
    "cold" (needs the same GPU) waits from t=0. Returns when "cold" was dispatched, or None."""
    state = (
        cluster()
        .model("hot", vram_gb=8)
        .model("cold", vram_gb=8)
        .pool("p")
        .gpu("g0", vram_gb=10)
        .worker("w-hot", "hot")
        .job("c1", "cold", queued_at=0.0)
        .build()
    )
    scheduler = BuiltinScheduler(drain_after_s=drain_after_s)
    running: list[str] = []
    ready: list[str] = []
    n = 0
    for step in range(1, steps):
        now = float(step)
        for job_id in running:  # every job takes one step
            state.job_finished(job_id, now=now)
        running = []
        for worker_id in ready:
            state.mark_worker(worker_id, "ready")
        ready = []
        while sum(q.model_ref == "hot" for q in state.ordered_jobs()) < 2:
            n += 1
            state.add_job(make_job(f"h{n}", "hot", queued_at=now))
        snap = state.snapshot(now)
        decision = scheduler.schedule(snap)
        assert validate_decision(decision, snap) == []
        placeholders = iter(state.apply(decision, now=now))
        for act in iter_actions(decision):
            if isinstance(act, Dispatch):
                if act.job_id == "c1":
                    return now
                running.append(act.job_id)
            elif isinstance(act, EvictWorker):
                state.remove_worker(act.worker_id)
            elif isinstance(act, StartWorker):
                worker_id = f"w-{act.model_ref}-{step}"
                state.start_confirmed(next(placeholders), worker_id)
                ready.append(worker_id)
    return None


def test_a_model_whose_gpu_is_always_busy_gets_it_once_its_job_waited_drain_after_s() -> None:
    started = run_hot_stream(drain_after_s=30.0)
    assert started is not None
    assert 30.0 <= started <= 35.0  # drained at 30 s, evicted when idle, started, dispatched


def test_without_draining_a_busy_model_can_keep_another_waiting_forever() -> None:
    assert run_hot_stream(drain_after_s=None) is None


def test_a_drain_is_explained_in_the_waiting_list() -> None:
    state = (
        base()
        .pool("p")
        .gpu("g0", vram_gb=8)
        .worker("w1", "other", status="busy")
        .job("j1", "small", queued_at=0)
        .job("o1", "other")
        .build()
    )
    decision = BuiltinScheduler(drain_after_s=10).schedule(state.snapshot(100.0))
    assert isinstance(decision, Wait)
    note = decision.explanation["waiting"][0]
    assert note["reason"] == "draining"
    assert note["draining"] == ["w1"]
    assert (note["drain_pool_id"], note["drain_gpu_id"]) == ("p", "g0")


# -- workers on several GPUs ---------------------------------------------------------------
# A worker on several GPUs holds an equal share of its VRAM on each (state, planner and
# validator count it the same way). A pool may report a worker whose share exceeds a GPU:
# that GPU is then over-committed, and evicting the worker frees at most the GPU's size.


def wide() -> ClusterBuilder:
    return (
        cluster()
        .model("ten", vram_gb=10)
        .model("four", vram_gb=4)
        .model("tiny", vram_gb=4)
        .model("wide", vram_gb=20)
    )


MULTI_GPU_CASES = [
    Case(
        "no start on a GPU smaller than the model, even after evicting a worker whose share"
        " there is larger than the GPU: no GPU can ever hold it, so NO_CAPACITY",
        lambda: (
            wide()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .gpu("g1", vram_gb=8)
            .worker("w1", "wide", gpu=["g0", "g1"], vram_gb=20, last_used_at=10.0)
            .job("j1", "ten")
        ),
        [("reject", "j1", "NO_CAPACITY")],
    ),
    Case(
        "when one GPU of the wide worker can hold the model, the worker is evicted and the"
        " model starts on that GPU",
        lambda: (
            wide()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .gpu("g1", vram_gb=16)
            .worker("w1", "wide", gpu=["g0", "g1"], vram_gb=20, last_used_at=10.0)
            .job("j1", "ten")
        ),
        [("evict", "w1"), ("start", "p", "g1", "ten")],
    ),
    Case(
        "the GPU that fits may be on another pool: the wide worker stays, the model starts"
        " there after its own eviction",
        lambda: (
            wide()
            .pool("p")
            .gpu("g0", vram_gb=8)
            .gpu("g1", vram_gb=8)
            .worker("w1", "wide", gpu=["g0", "g1"], vram_gb=20, last_used_at=10.0)
            .pool("q")
            .gpu("g0", vram_gb=16)
            .worker("w2", "four", vram_gb=4, last_used_at=500.0)
            .worker("w3", "four", vram_gb=4, last_used_at=600.0)
            .job("j1", "ten")
        ),
        [("evict", "w2"), ("start", "q", "g0", "ten")],
    ),
    Case(
        "an over-committed GPU's excess counts against what an eviction frees there: evicting"
        " the small worker alone does not make room, evicting the wide one does (elsewhere)",
        lambda: (
            wide()
            .pool("p")
            .gpu("g0", vram_gb=8)  # 6 GB share of w-wide + 4 GB of w-small: 2 GB over
            .gpu("g1", vram_gb=6)  # 6 GB share of w-wide: full
            .worker("w-wide", "wide", gpu=["g0", "g1"], vram_gb=12, last_used_at=500.0)
            .worker("w-small", "tiny", gpu="g0", vram_gb=4, last_used_at=10.0)
            .job("j1", "four")
        ),
        [("evict", "w-wide"), ("start", "p", "g1", "four")],
    ),
    Case(
        "a wide worker that fits its GPUs frees its share on each: evicted, the model"
        " starts on one of them",
        lambda: (
            wide()
            .pool("p")
            .gpu("g0", vram_gb=12)
            .gpu("g1", vram_gb=12)
            .worker("w1", "wide", gpu=["g0", "g1"], vram_gb=20, last_used_at=10.0)
            .job("j1", "ten")
        ),
        [("evict", "w1"), ("start", "p", "g0", "ten")],
    ),
]


@pytest.mark.parametrize("case", MULTI_GPU_CASES, ids=[c.name for c in MULTI_GPU_CASES])
def test_model_placement_with_workers_on_several_gpus(case: Case) -> None:
    assert brief(decide(case.build(), case.now, **case.scheduler)) == case.expected
