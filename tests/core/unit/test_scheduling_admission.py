"""admit(): the pure admission decision — tenant quota, capacity, full-queue policy."""

from __future__ import annotations

from orchestrator_core import ErrorCode, OrchestratorConfig, QueueFull
from orchestrator_core.scheduling import (
    AdmissionLimits,
    Admitted,
    ClusterState,
    FairShareOrder,
    FifoOrder,
    FullQueuePolicy,
    PriorityOrder,
    Refused,
    admit,
)
from orchestrator_core.testing import make_job

I, B = "interactive", "batch"


def limits(
    capacity: int = -1,
    policy: FullQueuePolicy = FullQueuePolicy.REJECT,
    quotas: dict[str, int] | None = None,
    retry: float = 2,
) -> AdmissionLimits:
    return AdmissionLimits(capacity, policy, retry, quotas or {})


def state_with(
    *jobs: tuple[str, str, float], order: object = None, tenant: str | None = None
) -> ClusterState:
    state = ClusterState(order=order)  # type: ignore[arg-type]
    for job_id, priority, at in jobs:
        state.add_job(make_job(job_id, "m", priority=priority, queued_at=at, tenant=tenant))
    return state


def admitted(decision: Admitted | Refused) -> Admitted:
    assert isinstance(decision, Admitted), decision
    return decision


def refused(decision: Admitted | Refused) -> Refused:
    assert isinstance(decision, Refused), decision
    return decision


def test_limits_from_config_take_the_queue_settings_and_the_tenants_with_a_quota() -> None:
    cfg = OrchestratorConfig.from_mapping(
        {
            "queue": {"capacity": 7, "full_policy": "drop-oldest-batch", "retry_after_s": 5},
            "tenants": [{"tenant_id": "a", "max_queued": 3}, {"tenant_id": "b"}],
        }
    )
    got = AdmissionLimits.from_config(cfg)
    assert got == AdmissionLimits(7, FullQueuePolicy.DROP_OLDEST_BATCH, 5, {"a": 3})


def test_room_in_the_queue_admits_at_the_position_the_job_will_take() -> None:
    state = state_with(("i1", I, 1.0), ("b1", B, 2.0), ("i2", I, 3.0))
    decision = admitted(admit(state, make_job("new", "m", priority=I, queued_at=4.0), limits(5)))
    assert decision == Admitted(2, None)
    state.add_job(make_job("new", "m", priority=I, queued_at=4.0))
    assert state.position("new") == 2


def test_a_full_queue_with_reject_refuses_with_queue_full_and_the_retry_hint() -> None:
    state = state_with(("i1", I, 1.0), ("b1", B, 2.0))
    error = refused(admit(state, make_job("new", "m", queued_at=3.0), limits(2, retry=2.5))).error
    assert isinstance(error, QueueFull)
    assert error.code is ErrorCode.QUEUE_FULL
    assert error.message == "queue is full (2 jobs); retry later"
    assert error.details == {"capacity": 2, "retry_after_s": 3}  # whole seconds, rounded up
    assert len(state) == 2  # nothing changed


def test_drop_oldest_batch_names_the_oldest_unpromoted_batch_job() -> None:
    state = state_with(("b-old", B, 1.0), ("i1", I, 2.0), ("b-new", B, 3.0))
    job = make_job("new", "m", priority=B, queued_at=4.0)
    decision = admitted(admit(state, job, limits(3, FullQueuePolicy.DROP_OLDEST_BATCH)))
    assert decision.dropped == "b-old"
    # position once b-old is gone: i1, b-new, new
    assert decision.position == 2
    state.remove_job("b-old")
    state.add_job(job)
    assert state.position("new") == 2


def test_drop_oldest_batch_skips_promoted_and_due_batch_jobs() -> None:
    order = PriorityOrder(promote_after_s=100.0)
    state = state_with(
        ("b-promoted", B, 0.0), ("b-due", B, 50.0), ("b-young", B, 550.0), order=order
    )
    state.snapshot(100.0)  # promotes b-promoted (queued at 0)
    job = make_job("new", "m", priority=I, queued_at=600.0)  # b-due is due at 600: not dropped
    decision = admitted(admit(state, job, limits(3, FullQueuePolicy.DROP_OLDEST_BATCH)))
    assert decision.dropped == "b-young"


def test_drop_oldest_batch_refuses_when_no_batch_job_is_queued() -> None:
    state = state_with(("i1", I, 1.0), ("i2", I, 2.0))
    decision = refused(
        admit(state, make_job("new", "m"), limits(2, FullQueuePolicy.DROP_OLDEST_BATCH))
    )
    assert isinstance(decision.error, QueueFull)


def test_drop_oldest_batch_under_fifo_still_drops_a_batch_job() -> None:
    state = state_with(("i1", I, 1.0), ("b1", B, 2.0), ("b2", B, 3.0), order=FifoOrder())
    job = make_job("new", "m", priority=I, queued_at=4.0)
    decision = admitted(admit(state, job, limits(3, FullQueuePolicy.DROP_OLDEST_BATCH)))
    assert decision == Admitted(2, "b1")  # FIFO: i1, b2, new


def test_admissions_in_flight_count_against_the_capacity() -> None:
    state = state_with(("i1", I, 1.0))
    assert isinstance(admit(state, make_job("new", "m"), limits(3), reserved=1), Admitted)
    assert isinstance(admit(state, make_job("new", "m"), limits(3), reserved=2), Refused)


def test_an_unbounded_queue_never_refuses() -> None:
    state = state_with(*((f"j{n}", I, float(n)) for n in range(50)))
    assert isinstance(admit(state, make_job("new", "m"), limits(-1), reserved=10**6), Admitted)


def test_a_tenant_at_its_queued_quota_is_refused_first_with_quota_exceeded() -> None:
    state = state_with(("a1", I, 1.0), ("a2", I, 2.0), tenant="a")
    job = make_job("new", "m", tenant="a")
    # the queue is full too: the quota is checked first
    error = refused(admit(state, job, limits(2, quotas={"a": 2}, retry=1))).error
    assert error.code is ErrorCode.QUOTA_EXCEEDED
    assert error.message == "tenant a has 2 jobs queued (its quota); retry later"
    assert error.details == {"tenant": "a", "max_queued": 2, "retry_after_s": 1}


def test_the_quota_counts_the_tenants_admissions_in_flight_and_only_its_own() -> None:
    state = state_with(("a1", I, 1.0), tenant="a")
    lim = limits(quotas={"a": 2})
    assert isinstance(admit(state, make_job("n", "m", tenant="a"), lim), Admitted)
    refusal = admit(state, make_job("n", "m", tenant="a"), lim, reserved_by_tenant={"a": 1})
    assert isinstance(refusal, Refused)
    other = admit(state, make_job("n", "m", tenant="b"), lim, reserved_by_tenant={"a": 5})
    assert isinstance(other, Admitted)
    assert isinstance(admit(state, make_job("n", "m"), lim), Admitted)  # no tenant, no quota


def test_a_fair_share_position_is_the_tail_of_the_jobs_class() -> None:
    state = state_with(("i1", I, 1.0), ("b1", B, 2.0), ("i2", I, 3.0), order=FairShareOrder())
    assert admitted(admit(state, make_job("n", "m", priority=I), limits())).position == 2
    assert admitted(admit(state, make_job("n", "m", priority=B), limits())).position == 3


def test_admit_changes_nothing() -> None:
    state = state_with(("b1", B, 1.0), ("i1", I, 2.0))
    version = state.version
    admit(state, make_job("n", "m"), limits(2, FullQueuePolicy.DROP_OLDEST_BATCH))
    assert state.version == version
    assert [j.job_id for j in state.ordered_jobs()] == ["i1", "b1"]
