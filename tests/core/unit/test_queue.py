"""InMemoryJobQueue: ordering, capacity, full-queue policies, promotion, cancel, position."""

from __future__ import annotations

import itertools

import pytest
from orchestrator_core import (
    ClusterState,
    ErrorCode,
    FairShareOrder,
    FifoOrder,
    FullQueuePolicy,
    InMemoryJobQueue,
    Job,
    JobNotFound,
    JobParams,
    JobQueue,
    JobStatus,
    Priority,
    QueueFull,
)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def job(
    job_id: str,
    priority: Priority = Priority.INTERACTIVE,
    *,
    at: float = 1000.0,
    tenant: str | None = None,
) -> Job:
    return Job(
        job_id=job_id,
        model_ref="m",
        prompt="p",
        params=JobParams(max_tokens=1),
        priority=priority,
        queued_at=at,
        created_at=at,
        tenant_id=tenant,
    )


I, B = Priority.INTERACTIVE, Priority.BATCH


def ids(q: InMemoryJobQueue) -> list[str]:
    return [j.job_id for j in q]


def test_the_in_memory_queue_implements_the_protocol() -> None:
    assert isinstance(InMemoryJobQueue(), JobQueue)


def test_interactive_jobs_run_before_batch_jobs_fifo_within_each() -> None:
    q = InMemoryJobQueue(capacity=-1, clock=FakeClock())
    for name, prio in [("b1", B), ("i1", I), ("b2", B), ("i2", I)]:
        q.enqueue(job(name, prio))
    assert ids(q) == ["i1", "i2", "b1", "b2"]
    assert [q.dequeue().job_id for _ in range(4)] == ["i1", "i2", "b1", "b2"]  # type: ignore[union-attr]
    assert q.dequeue() is None and q.peek() is None


def test_enqueue_reports_the_position_and_position_counts_jobs_ahead() -> None:
    q = InMemoryJobQueue(capacity=-1, clock=FakeClock())
    assert q.enqueue(job("b1", B)).position == 0
    assert q.enqueue(job("i1", I)).position == 0
    assert q.enqueue(job("i2", I)).position == 1
    assert q.position("b1") == 2
    with pytest.raises(JobNotFound):
        q.position("nope")


def test_peek_does_not_remove_and_dequeue_does() -> None:
    q = InMemoryJobQueue(clock=FakeClock())
    q.enqueue(job("a"))
    assert q.peek().job_id == "a"  # type: ignore[union-attr]
    assert len(q) == 1
    assert q.dequeue().job_id == "a"  # type: ignore[union-attr]
    assert len(q) == 0 and "a" not in q


def test_cancelling_a_job_in_the_middle_marks_it_and_keeps_the_order_of_the_rest() -> None:
    q = InMemoryJobQueue(capacity=-1, clock=FakeClock())
    for n in "abcde":
        q.enqueue(job(n))
    cancelled = q.cancel("c", now=5.0)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error_code is ErrorCode.CANCELLED
    assert ids(q) == ["a", "b", "d", "e"]
    assert q.position("d") == 2
    with pytest.raises(JobNotFound):
        q.cancel("c", now=6.0)


def test_remove_takes_a_job_out_without_changing_its_status() -> None:
    q = InMemoryJobQueue(clock=FakeClock())
    q.enqueue(job("a"))
    assert q.remove("a").status is JobStatus.QUEUED
    assert len(q) == 0


def test_a_full_queue_with_reject_refuses_and_changes_nothing() -> None:
    q = InMemoryJobQueue(capacity=2, clock=FakeClock(), retry_after_s=3)
    q.enqueue(job("a", B))
    q.enqueue(job("b", B))
    with pytest.raises(QueueFull) as info:
        q.enqueue(job("c"))
    assert info.value.code is ErrorCode.QUEUE_FULL and info.value.http_status == 429
    assert info.value.retry_after_s == 3
    assert ids(q) == ["a", "b"]


def test_drop_oldest_batch_drops_the_oldest_batch_job_which_fails_with_queue_full() -> None:
    q = InMemoryJobQueue(capacity=3, full_policy="drop-oldest-batch", clock=FakeClock())
    for name, prio in [("i1", I), ("b1", B), ("b2", B)]:
        q.enqueue(job(name, prio))
    result = q.enqueue(job("i2", I))
    assert result.dropped is not None and result.dropped.job_id == "b1"
    assert result.dropped.status is JobStatus.FAILED
    assert result.dropped.error_code is ErrorCode.QUEUE_FULL
    assert ids(q) == ["i1", "i2", "b2"]
    assert result.position == 1


def test_drop_oldest_batch_rejects_when_no_batch_job_is_queued() -> None:
    q = InMemoryJobQueue(
        capacity=2, full_policy=FullQueuePolicy.DROP_OLDEST_BATCH, clock=FakeClock()
    )
    q.enqueue(job("i1"))
    q.enqueue(job("i2"))
    with pytest.raises(QueueFull):
        q.enqueue(job("b1", B))
    assert ids(q) == ["i1", "i2"]


def test_an_unbounded_queue_never_refuses() -> None:
    q = InMemoryJobQueue(capacity=-1, clock=FakeClock())
    for n in range(500):
        q.enqueue(job(str(n)))
    assert len(q) == 500


@pytest.mark.parametrize("capacity", [0, -2, -100])
def test_capacity_must_be_minus_one_or_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity: must be -1 or >= 1"):
        InMemoryJobQueue(capacity=capacity)


def test_a_batch_job_older_than_the_promotion_age_runs_before_later_interactive_jobs() -> None:
    clock = FakeClock(1000.0)
    q = InMemoryJobQueue(capacity=-1, promote_after_s=60, clock=clock)
    q.enqueue(job("b-old", B, at=1000.0))
    clock.t = 1030.0
    q.enqueue(job("i-early", I, at=1030.0))
    assert ids(q) == ["i-early", "b-old"]
    clock.t = 1059.0
    assert q.peek().job_id == "i-early"  # type: ignore[union-attr]
    clock.t = 1060.0
    q.enqueue(job("i-late", I, at=1060.0))
    # b-old is promoted; it arrived before i-early, so it runs first among interactive.
    assert ids(q) == ["b-old", "i-early", "i-late"]
    assert q.depth(B) == 1 and q.depth(I) == 2


def test_promotion_can_be_switched_off() -> None:
    clock = FakeClock(0.0)
    q = InMemoryJobQueue(capacity=-1, promote_after_s=None, clock=clock)
    q.enqueue(job("b", B, at=0.0))
    clock.t = 10**9
    q.enqueue(job("i", I, at=clock.t))
    assert ids(q) == ["i", "b"]


def test_enqueue_refuses_a_job_that_is_not_queued_or_already_present() -> None:
    q = InMemoryJobQueue(clock=FakeClock())
    running = job("r")
    running.status = JobStatus.RUNNING
    with pytest.raises(ValueError, match="only queued jobs"):
        q.enqueue(running)
    q.enqueue(job("a"))
    with pytest.raises(ValueError, match="already queued"):
        q.enqueue(job("a"))


def test_head_returns_the_first_jobs_in_order() -> None:
    q = InMemoryJobQueue(capacity=-1, clock=FakeClock())
    for n, p in [("b", B), ("i", I), ("j", I)]:
        q.enqueue(job(n, p))
    assert [j.job_id for j in q.head(2)] == ["i", "j"]


def test_weighted_fairness_alternates_two_backlogged_tenants_of_equal_weight() -> None:
    q = InMemoryJobQueue(capacity=-1, order=FairShareOrder(), clock=FakeClock())
    for n in range(4):
        q.enqueue(job(f"a{n}", tenant="a"))
    for n in range(4):
        q.enqueue(job(f"b{n}", tenant="b"))
    order = [q.dequeue().tenant_id for _ in range(8)]  # type: ignore[union-attr]
    assert order == ["a", "b"] * 4


def test_weighted_fairness_gives_a_double_weight_tenant_two_of_every_three() -> None:
    q = InMemoryJobQueue(
        capacity=-1, order=FairShareOrder(weights={"gold": 2.0}), clock=FakeClock()
    )
    for n in range(30):
        q.enqueue(job(f"s{n}", tenant="silver"))
        q.enqueue(job(f"g{n}", tenant="gold"))
    first = [q.dequeue().tenant_id for _ in range(30)]  # type: ignore[union-attr]
    assert first.count("gold") == 20


def test_weighted_fairness_gives_an_idle_tenant_no_credit_for_idle_time() -> None:
    q = InMemoryJobQueue(capacity=-1, order=FairShareOrder(), clock=FakeClock())
    for n in range(10):
        q.enqueue(job(f"a{n}", tenant="a"))
    for _ in range(6):
        q.dequeue()
    for n in range(10):
        q.enqueue(job(f"b{n}", tenant="b"))
    nxt = [q.dequeue().tenant_id for _ in range(8)]  # type: ignore[union-attr]
    # b arrives late: it alternates with a instead of running 6 jobs in a row.
    assert nxt.count("a") == 4
    longest = max(len(run) for run in itertools.groupby(nxt) for run in [list(run[1])])
    assert longest <= 2


def test_weighted_fairness_refuses_non_positive_weights() -> None:
    with pytest.raises(ValueError, match="> 0"):
        FairShareOrder(weights={"x": 0.0})


def test_fifo_order_ignores_priority_but_drop_oldest_batch_still_drops_batch() -> None:
    q = InMemoryJobQueue(
        capacity=3, full_policy="drop-oldest-batch", order=FifoOrder(), clock=FakeClock()
    )
    for name, prio in [("b1", B), ("i1", I), ("b2", B)]:
        q.enqueue(job(name, prio))
    assert ids(q) == ["b1", "i1", "b2"]
    result = q.enqueue(job("i2", I))
    assert result.dropped is not None and result.dropped.job_id == "b1"
    assert ids(q) == ["i1", "b2", "i2"]


def test_the_queue_orders_jobs_exactly_like_the_scheduler_state() -> None:
    """One definition of order: the queue's positions equal ClusterState's for the same jobs."""
    clock = FakeClock(1000.0)
    order = FairShareOrder(weights={"a": 2.0}, promote_after_s=60)
    q = InMemoryJobQueue(capacity=-1, order=order, clock=clock)
    state = ClusterState(order=order.fresh())
    for n in range(12):
        j = job(f"j{n}", B if n % 3 else I, at=clock.t, tenant="a" if n % 2 else "b")
        q.enqueue(j)
        state.add_job(job(j.job_id, j.priority, at=j.queued_at, tenant=j.tenant_id))
        clock.t += 7
    state.snapshot(clock.t)  # applies due promotions in the state
    assert [q.position(f"j{n}") for n in range(12)] == [state.position(f"j{n}") for n in range(12)]
