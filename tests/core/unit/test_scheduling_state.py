"""ClusterState: the daemon's indexed cluster, updated event by event."""

from __future__ import annotations

import pytest
from orchestrator_core import JobNotFound, OrchestratorConfig, PoolStatus, WorkerStatus
from orchestrator_core.scheduling import (
    PENDING_PREFIX,
    BuiltinScheduler,
    ClusterState,
    Dispatch,
    FairShareOrder,
    FifoOrder,
    PriorityOrder,
    RoundRobinPlacement,
    SnapshotStale,
    StartWorker,
    Wait,
    WorkerNotFound,
    iter_actions,
)
from orchestrator_core.testing import GB, cluster, make_gpu, make_job, make_pool, make_worker


def one_pool(*workers: object, heartbeat_at: float = 0.0, gpu_gb: float = 24) -> object:
    return make_pool(
        "p", gpus=[make_gpu("g0", vram_gb=gpu_gb)], workers=list(workers), heartbeat_at=heartbeat_at
    )


def fresh(**kw: object) -> ClusterState:
    return cluster(**kw).model("m", vram_gb=8).model("n", vram_gb=8).build()  # type: ignore[arg-type]


def status(state: ClusterState, worker_id: str) -> WorkerStatus:
    view = state.worker_view(worker_id)
    assert view is not None
    return view.status


def test_a_dispatched_single_slot_worker_is_busy_before_any_heartbeat_says_so() -> None:
    state = fresh()
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    state.add_job(make_job("j1", "m"))
    state.job_dispatched("j1", "w1", now=1.0)
    assert status(state, "w1") is WorkerStatus.BUSY
    # a heartbeat sent before the pool saw the job still says ready: the worker stays busy
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8), heartbeat_at=1.5))  # type: ignore[arg-type]
    assert status(state, "w1") is WorkerStatus.BUSY


def test_a_finished_job_frees_its_worker_before_the_next_heartbeat() -> None:
    state = fresh()
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    state.add_job(make_job("j1", "m"))
    state.job_dispatched("j1", "w1", now=1.0)
    state.upsert_pool(one_pool(make_worker("w1", "m", status="busy", active=1, vram_gb=8)))  # type: ignore[arg-type]
    assert state.job_finished("j1", now=2.0)
    assert status(state, "w1") is WorkerStatus.READY
    view = state.worker_view("w1")
    assert view is not None
    assert (view.last_used_at, view.jobs_completed) == (2.0, 1)
    assert not state.job_finished("j1", now=3.0)  # idempotent


def test_a_report_can_make_a_worker_busier_than_the_known_jobs_until_the_next_one() -> None:
    state = fresh()
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    state.add_job(make_job("j1", "m"))
    state.job_dispatched("j1", "w1", now=1.0)
    state.job_finished("j1", now=2.0)
    # a report of busy-ness the state cannot explain: trust it until the next report
    state.upsert_pool(one_pool(make_worker("w1", "m", status="busy", active=1, vram_gb=8)))  # type: ignore[arg-type]
    assert status(state, "w1") is WorkerStatus.BUSY
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    assert status(state, "w1") is WorkerStatus.READY


def test_a_report_still_showing_a_job_that_has_finished_does_not_hold_its_slot() -> None:
    state = fresh()
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    state.add_job(make_job("j1", "m"))
    state.job_dispatched("j1", "w1", now=1.0)
    state.job_finished("j1", now=2.0)
    # the heartbeat was sent before the worker finished j1, and arrives after the end
    stale = make_worker("w1", "m", status="busy", active=1, vram_gb=8)
    stale.current_job_id = "j1"
    state.upsert_pool(one_pool(stale))  # type: ignore[arg-type]
    assert status(state, "w1") is WorkerStatus.READY


def test_a_heartbeat_replaces_the_inventory() -> None:
    state = fresh()
    state.upsert_pool(
        one_pool(make_worker("w1", "m", vram_gb=8), make_worker("w2", "n", vram_gb=8))
    )  # type: ignore[arg-type]
    state.upsert_pool(one_pool(make_worker("w2", "n", vram_gb=8)))  # type: ignore[arg-type]
    assert state.worker_view("w1") is None
    assert state.worker_view("w2") is not None
    assert state.gpu_view("p", "g0").vram_allocated_bytes == 8 * GB  # type: ignore[union-attr]
    assert state.self_check() == []


def test_a_requested_start_survives_heartbeats_until_confirmed_or_expired() -> None:
    state = fresh()
    state.pending_start_ttl_s = 100.0
    state.upsert_pool(one_pool())  # type: ignore[arg-type]
    ph = state.start_requested("p", "g0", "m", now=10.0)
    assert ph.startswith(PENDING_PREFIX)
    assert state.live_slots("m") == 1
    assert state.gpu_view("p", "g0").vram_free_bytes == 16 * GB  # type: ignore[union-attr]
    state.upsert_pool(one_pool(heartbeat_at=20.0))  # type: ignore[arg-type]
    assert state.worker_view(ph) is not None  # not reported yet, still reserved
    state.start_confirmed(ph, "w-real")
    assert state.worker_view(ph) is None
    view = state.worker_view("w-real")
    assert view is not None
    assert view.pending
    assert view.status is WorkerStatus.STARTING
    state.upsert_pool(
        one_pool(make_worker("w-real", "m", status="ready", vram_gb=8), heartbeat_at=30.0)
    )  # type: ignore[arg-type]
    view = state.worker_view("w-real")
    assert view is not None
    assert not view.pending
    assert view.status is WorkerStatus.READY
    # a start the pool never reports is forgotten after the TTL (by the pool's clock)
    ph2 = state.start_requested("p", "g0", "n", now=40.0)
    state.upsert_pool(one_pool(make_worker("w-real", "m", vram_gb=8), heartbeat_at=139.0))  # type: ignore[arg-type]
    assert state.worker_view(ph2) is not None
    state.upsert_pool(one_pool(make_worker("w-real", "m", vram_gb=8), heartbeat_at=141.0))  # type: ignore[arg-type]
    assert state.worker_view(ph2) is None
    assert state.self_check() == []


def test_confirming_a_start_that_a_heartbeat_already_reported_drops_the_placeholder() -> None:
    state = fresh()
    state.upsert_pool(one_pool())  # type: ignore[arg-type]
    ph = state.start_requested("p", "g0", "m", now=1.0)
    state.upsert_pool(one_pool(make_worker("w9", "m", status="starting", vram_gb=8)))  # type: ignore[arg-type]
    state.start_confirmed(ph, "w9")
    assert state.worker_view(ph) is None
    assert state.live_slots("m") == 1
    assert state.gpu_view("p", "g0").vram_allocated_bytes == 8 * GB  # type: ignore[union-attr]


def test_a_worker_asked_to_stop_takes_no_jobs_and_its_vram_counts_as_released() -> None:
    state = fresh()
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8), gpu_gb=8))  # type: ignore[arg-type]
    assert state.gpu_view("p", "g0").vram_free_bytes == 0  # type: ignore[union-attr]
    state.stop_requested("w1")
    assert status(state, "w1") is WorkerStatus.DRAINING
    assert state.gpu_view("p", "g0").vram_free_bytes == 8 * GB  # type: ignore[union-attr]
    state.add_job(make_job("j1", "m"))
    decision = BuiltinScheduler().schedule(state.snapshot(5.0))
    assert isinstance(decision, StartWorker)  # no dispatch to w1; its VRAM is free again


def test_an_offline_pool_gets_no_work_and_its_workers_are_not_capacity() -> None:
    state = fresh()
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    state.upsert_pool(make_pool("q", gpus=[make_gpu("g0", vram_gb=24)]))
    state.add_job(make_job("j1", "m"))
    state.set_pool_status("p", PoolStatus.OFFLINE)
    assert state.live_slots("m") == 0
    decision = BuiltinScheduler().schedule(state.snapshot(5.0))
    assert decision == StartWorker("q", "g0", "m", "cold_start")
    state.set_pool_status("p", "online")
    assert BuiltinScheduler().schedule(state.snapshot(6.0)) == Dispatch("j1", "w1", "p")


def test_removing_a_pool_forgets_its_gpus_and_workers() -> None:
    state = fresh()
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    state.remove_pool("p")
    assert state.worker_view("w1") is None
    assert state.pool_view("p") is None
    assert state.live_slots("m") == 0
    assert state.could_ever_fit("m") is None


def test_a_snapshot_is_stale_after_any_change() -> None:
    state = fresh()
    snap = state.snapshot(1.0)
    assert snap.queued_count() == 0
    state.add_job(make_job("j1", "m"))
    assert snap.stale
    with pytest.raises(SnapshotStale):
        snap.job("j1")
    with pytest.raises(SnapshotStale):
        BuiltinScheduler().schedule(snap)


def test_job_events_with_unknown_ids_raise_clear_errors() -> None:
    state = fresh()
    with pytest.raises(JobNotFound):
        state.remove_job("nope")
    state.add_job(make_job("j1", "m"))
    with pytest.raises(ValueError, match="already known"):
        state.add_job(make_job("j1", "m"))
    with pytest.raises(WorkerNotFound):
        state.job_dispatched("j1", "ghost", now=1.0)
    job = make_job("j2", "m")
    job.cancel(now=1.0)
    with pytest.raises(ValueError, match="only queued jobs"):
        state.add_job(job)


def test_position_follows_the_queue_order() -> None:
    state = fresh()
    state.add_job(make_job("b1", "m", priority="batch", queued_at=1))
    state.add_job(make_job("i1", "n", queued_at=2))
    state.add_job(make_job("i2", "m", queued_at=3))
    assert [state.position(j) for j in ("i1", "i2", "b1")] == [0, 1, 2]
    assert [q.job_id for q in state.ordered_jobs()] == ["i1", "i2", "b1"]


def test_promotion_is_bounded_per_snapshot_and_completes_over_later_ones() -> None:
    state = ClusterState(order=PriorityOrder(promote_after_s=10), max_promotions_per_snapshot=2)
    for i in range(5):
        state.add_job(make_job(f"b{i}", "m", priority="batch", queued_at=i))
    state.snapshot(100.0)
    assert state.class_count(0) == 2
    state.snapshot(100.0)
    state.snapshot(100.0)
    assert state.class_count(0) == 5
    assert [q.job_id for q in state.ordered_jobs()] == [f"b{i}" for i in range(5)]


def test_reindex_switches_the_queue_order_and_the_placement() -> None:
    state = (
        cluster(order=FifoOrder())
        .model("m", vram_gb=1)
        .pool("p")
        .gpu("g0")
        .worker("w1", "m")
        .job("b1", "m", priority="batch")
        .job("i1", "m")
        .build()
    )
    assert [q.job_id for q in state.ordered_jobs()] == ["b1", "i1"]
    state.reindex(order=PriorityOrder(promote_after_s=None), placement=RoundRobinPlacement())
    assert [q.job_id for q in state.ordered_jobs()] == ["i1", "b1"]
    assert state.placement.name == "round-robin"
    assert BuiltinScheduler().schedule(state.snapshot(5.0)) == Dispatch("i1", "w1", "p")


def test_a_restored_running_job_counts_against_its_worker_and_tenant() -> None:
    state = fresh(enforce_quotas=True)
    job = make_job("j1", "m", tenant="a")
    job.start(pool_id="p", worker_id="w1", now=1.0)
    state.restore_running(job, "w1")  # before the pool's first heartbeat
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    assert status(state, "w1") is WorkerStatus.BUSY
    assert state.tenant_view("a").running == 1
    state.job_finished("j1", now=2.0)
    assert status(state, "w1") is WorkerStatus.READY


def test_from_config_takes_order_placement_catalog_tenants_and_quota_mode() -> None:
    config = OrchestratorConfig.from_mapping(
        {
            "mode": "platform",
            "auth": {
                "clients": [{"token": "t" * 16, "tenant": "acme"}],
                "pool_tokens": ["p" * 16],
            },
            "scheduler": {"policy": "fair-share", "placement": "round-robin"},
            "models": [{"model_ref": "llama", "aliases": ["l3"], "vram_bytes": 5}],
            "tenants": [{"tenant_id": "acme", "weight": 3.0, "max_running": 2}],
        }
    )
    state = ClusterState.from_config(config)
    assert isinstance(state.order, FairShareOrder)
    assert state.order.weight("acme") == 3.0
    assert state.placement.name == "round-robin"
    assert state.resolve_model("l3") == "llama"
    assert state.model_vram("l3") == 5
    assert state.enforce_quotas
    assert state.tenant_view("acme").max_running == 2


def test_the_state_stays_consistent_through_a_sequence_of_events() -> None:
    state = (
        cluster()
        .model("m", vram_gb=8)
        .model("n", vram_gb=8)
        .pool("p")
        .gpu("g0", vram_gb=16)
        .worker("w1", "m")
        .gpu("g1", vram_gb=16)
        .job("j1", "m")
        .job("j2", "n")
        .job("j3", "m")
        .build()
    )
    scheduler = BuiltinScheduler()
    for t in range(6):
        decision = scheduler.schedule(state.snapshot(float(t)))
        state.apply(decision, now=float(t))
        assert state.self_check() == []
        for act in iter_actions(decision):
            if isinstance(act, Dispatch):
                state.job_finished(act.job_id, now=float(t) + 0.5)
            if isinstance(act, StartWorker):
                ph = next(w for w in state.worker_ids() if w.startswith(PENDING_PREFIX))
                state.start_confirmed(ph, f"w-{act.model_ref}-{t}")
                state.mark_worker(f"w-{act.model_ref}-{t}", "ready")
        assert state.self_check() == []
    assert len(state) == 0
    assert isinstance(scheduler.schedule(state.snapshot(9.0)), Wait)


def test_jobs_a_report_shows_beyond_the_known_ones_keep_their_slots_after_a_dispatch() -> None:
    state = fresh()
    # the pool reports one job the state does not know (e.g. from before a restart)
    state.upsert_pool(one_pool(make_worker("w1", "m", slots=2, active=1, vram_gb=8)))  # type: ignore[arg-type]
    state.add_job(make_job("j1", "m"))
    state.add_job(make_job("j2", "m"))
    decision = BuiltinScheduler().schedule(state.snapshot(1.0))
    assert decision == Dispatch("j1", "w1", "p")
    state.apply(decision, now=1.0)
    assert status(state, "w1") is WorkerStatus.BUSY  # 1 unknown + 1 known = 2 slots
    # the next heartbeat no longer shows the unknown job: one slot is free again
    state.upsert_pool(one_pool(make_worker("w1", "m", slots=2, active=1, vram_gb=8)))  # type: ignore[arg-type]
    assert status(state, "w1") is WorkerStatus.READY


# -- the pools as given, running jobs by worker and pool, tenants' queues ----------------------


def test_the_state_keeps_the_pool_info_it_was_given_with_the_status_it_holds() -> None:
    state = fresh()
    info = one_pool(make_worker("w1", "m", vram_gb=8), heartbeat_at=5.0)
    state.upsert_pool(info)  # type: ignore[arg-type]
    assert state.pool_info("p") is info
    assert state.pool_sent_at("p") is None  # a registration
    state.set_pool_status("p", PoolStatus.DEGRADED)
    got = state.pool_info("p")
    assert got is not None and got.status is PoolStatus.DEGRADED
    assert got.workers == info.workers  # type: ignore[attr-defined]
    assert state.pool_info("missing") is None


def test_pool_sent_at_is_the_last_heartbeats_stamp_and_a_registration_resets_it() -> None:
    state = fresh()
    state.upsert_pool(one_pool(heartbeat_at=1.0), sent_at=0.9)  # type: ignore[arg-type]
    assert state.pool_sent_at("p") == 0.9
    state.upsert_pool(one_pool(heartbeat_at=2.0), sent_at=1.9)  # type: ignore[arg-type]
    assert state.pool_sent_at("p") == 1.9
    state.upsert_pool(one_pool(heartbeat_at=3.0))  # type: ignore[arg-type]
    assert state.pool_sent_at("p") is None
    state.upsert_pool(one_pool(heartbeat_at=4.0), sent_at=3.9)  # type: ignore[arg-type]
    state.remove_pool("p")
    assert (state.pool_sent_at("p"), state.pool_info("p"), state.pool_infos()) == (None, None, [])


def test_pool_infos_are_sorted_by_pool_id() -> None:
    state = fresh()
    for pid in ("p2", "p0", "p1"):
        state.upsert_pool(make_pool(pid, gpus=[make_gpu("g0")]))
    assert [p.pool_id for p in state.pool_infos()] == ["p0", "p1", "p2"]


def test_jobs_on_a_worker_and_on_a_pool_follow_dispatches_and_ends() -> None:
    state = fresh()
    w1 = make_worker("w1", "m", vram_gb=8, slots=2)
    w2 = make_worker("w2", "n", vram_gb=8)
    state.upsert_pool(one_pool(w1, w2))  # type: ignore[arg-type]
    state.upsert_pool(make_pool("q", gpus=[make_gpu("g0")], workers=[make_worker("x", "m")]))
    for job_id, model in (("j1", "m"), ("j2", "m"), ("j3", "n"), ("j4", "m")):
        state.add_job(make_job(job_id, model))
    state.job_dispatched("j2", "w1", now=1.0)
    state.job_dispatched("j1", "w1", now=1.0)
    state.job_dispatched("j3", "w2", now=1.0)
    state.job_dispatched("j4", "x", now=1.0)
    assert state.jobs_on_worker("w1") == ["j1", "j2"]
    assert state.worker_load("w1") == 2
    assert state.jobs_on_pool("p") == ["j1", "j2", "j3"]
    assert state.jobs_on_pool("q") == ["j4"]
    state.job_finished("j2", now=2.0)
    assert (state.jobs_on_worker("w1"), state.worker_load("w1")) == (["j1"], 1)
    assert state.jobs_on_pool("p") == ["j1", "j3"]
    assert (state.jobs_on_worker("nobody"), state.jobs_on_pool("nowhere")) == ([], [])
    assert state.worker_load("nobody") == 0


def test_tenant_queued_counts_a_tenants_queued_jobs() -> None:
    state = fresh()
    state.upsert_pool(one_pool(make_worker("w1", "m", vram_gb=8)))  # type: ignore[arg-type]
    for n in range(3):
        state.add_job(make_job(f"a{n}", "m", tenant="a"))
    state.add_job(make_job("b0", "m", tenant="b"))
    state.add_job(make_job("anon", "m"))
    assert (state.tenant_queued("a"), state.tenant_queued("b"), state.tenant_queued("")) == (
        3,
        1,
        1,
    )
    state.job_dispatched("a0", "w1", now=1.0)
    state.remove_job("a1")
    assert (state.tenant_queued("a"), state.tenant_queued("c")) == (1, 0)
