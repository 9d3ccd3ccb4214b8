"""Properties of InMemoryJobQueue against a plain reference model.

The reference keeps a list of (arrival seq, job) and recomputes the order from the queue's
rules on every step: interactive (and batch jobs older than the promotion age) first, then
batch; FIFO by arrival within each class. Every queue operation must agree with it, and
the full-queue policies must drop or refuse exactly what the rules say and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from orchestrator_core import (
    ErrorCode,
    FairShareOrder,
    InMemoryJobQueue,
    Job,
    JobNotFound,
    JobParams,
    JobStatus,
    Priority,
    QueueFull,
)

PROMOTE_AFTER = 50.0


@dataclass
class Clock:
    t: float = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Reference:
    capacity: int
    drop_oldest_batch: bool
    clock: Clock
    jobs: list[tuple[int, Job]] = field(default_factory=list)
    promoted: set[str] = field(default_factory=set)

    def _promote(self) -> None:
        for _, j in self.jobs:
            if j.priority is Priority.BATCH and self.clock.t - j.queued_at >= PROMOTE_AFTER:
                self.promoted.add(j.job_id)

    def order(self) -> list[str]:
        self._promote()

        def key(item: tuple[int, Job]) -> tuple[int, int]:
            seq, j = item
            cls = 0 if j.priority is Priority.INTERACTIVE or j.job_id in self.promoted else 1
            return (cls, seq)

        return [j.job_id for _, j in sorted(self.jobs, key=key)]

    def oldest_droppable_batch(self) -> str | None:
        self._promote()
        for _, j in self.jobs:
            if j.priority is Priority.BATCH and j.job_id not in self.promoted:
                return j.job_id
        return None


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.counter = 0
        self.q: InMemoryJobQueue | None = None
        self.ref: Reference | None = None

    @precondition(lambda self: self.q is None)
    @rule(capacity=st.sampled_from([-1, 1, 3, 8]), drop=st.booleans())
    def setup(self, capacity: int, drop: bool) -> None:
        self.q = InMemoryJobQueue(
            capacity=capacity,
            full_policy="drop-oldest-batch" if drop else "reject",
            promote_after_s=PROMOTE_AFTER,
            clock=self.clock,
        )
        self.ref = Reference(capacity, drop, self.clock)

    @precondition(lambda self: self.q is not None)
    @rule(priority=st.sampled_from(list(Priority)))
    def enqueue(self, priority: Priority) -> None:
        assert self.q is not None and self.ref is not None
        self.counter += 1
        j = Job(
            job_id=f"j{self.counter}",
            model_ref="m",
            prompt="p",
            params=JobParams(max_tokens=1),
            priority=priority,
            queued_at=self.clock.t,
        )
        before = self.ref.order()
        full = self.ref.capacity != -1 and len(self.ref.jobs) >= self.ref.capacity
        victim = self.ref.oldest_droppable_batch() if self.ref.drop_oldest_batch else None
        if full and victim is None:
            try:
                self.q.enqueue(j)
            except QueueFull:
                assert self.ref.order() == before  # nothing else changed
                return
            raise AssertionError("a full queue accepted a job it should refuse")
        result = self.q.enqueue(j)
        if full:
            assert result.dropped is not None and result.dropped.job_id == victim
            assert result.dropped.status is JobStatus.FAILED
            assert result.dropped.error_code is ErrorCode.QUEUE_FULL
            self.ref.jobs = [(s, x) for s, x in self.ref.jobs if x.job_id != victim]
        else:
            assert result.dropped is None
        self.ref.jobs.append((self.counter, j))
        assert result.position == self.ref.order().index(j.job_id)

    @precondition(lambda self: self.q is not None)
    @rule()
    def dequeue(self) -> None:
        assert self.q is not None and self.ref is not None
        expected = self.ref.order()
        got = self.q.dequeue()
        if not expected:
            assert got is None
            return
        assert got is not None and got.job_id == expected[0]
        self.ref.jobs = [(s, x) for s, x in self.ref.jobs if x.job_id != got.job_id]

    @precondition(lambda self: self.q is not None)
    @rule(pick=st.integers(min_value=0, max_value=50))
    def cancel(self, pick: int) -> None:
        assert self.q is not None and self.ref is not None
        if not self.ref.jobs:
            try:
                self.q.cancel("j-missing", now=self.clock.t)
            except JobNotFound:
                return
            raise AssertionError("cancel of a missing job succeeded")
        _, target = self.ref.jobs[pick % len(self.ref.jobs)]
        got = self.q.cancel(target.job_id, now=self.clock.t)
        assert got.status is JobStatus.CANCELLED
        self.ref.jobs = [(s, x) for s, x in self.ref.jobs if x.job_id != target.job_id]

    @precondition(lambda self: self.q is not None)
    @rule(dt=st.sampled_from([0.0, 1.0, 10.0, 49.0, 50.0, 100.0]))
    def advance(self, dt: float) -> None:
        self.clock.t += dt

    @invariant()
    def same_order_positions_and_length(self) -> None:
        if self.q is None or self.ref is None:
            return
        expected = self.ref.order()
        assert [j.job_id for j in self.q] == expected
        assert len(self.q) == len(expected)
        for i, job_id in enumerate(expected):
            assert self.q.position(job_id) == i
        peek = self.q.peek()
        assert (peek.job_id if peek else None) == (expected[0] if expected else None)
        if self.ref.capacity != -1:
            assert len(self.q) <= self.ref.capacity


QueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestQueueAgainstReference = QueueMachine.TestCase


@given(
    st.lists(st.sampled_from(["a", "b"]), min_size=2, max_size=200),
)
@settings(max_examples=100, deadline=None)
def test_two_equal_tenants_with_backlog_never_drift_apart(arrivals: list[str]) -> None:
    """Whatever order their jobs arrive in, while both tenants have jobs queued, dispatches
    alternate: over any prefix the counts differ by at most one."""
    q = InMemoryJobQueue(capacity=-1, order=FairShareOrder(), clock=Clock())
    for n, tenant in enumerate(arrivals):
        q.enqueue(
            Job(
                job_id=f"{tenant}{n}",
                model_ref="m",
                prompt="p",
                params=JobParams(max_tokens=1),
                tenant_id=tenant,
            )
        )
    both = min(arrivals.count("a"), arrivals.count("b"))
    counts = {"a": 0, "b": 0}
    for _ in range(2 * both):
        got = q.dequeue()
        assert got is not None and got.tenant_id is not None
        counts[got.tenant_id] += 1
        assert abs(counts["a"] - counts["b"]) <= 1
    assert counts == {"a": both, "b": both}


@given(st.lists(st.sampled_from(list(Priority)), max_size=100), st.data())
@settings(max_examples=100, deadline=None)
def test_nothing_is_lost_every_job_leaves_exactly_once(
    priorities: list[Priority], data: st.DataObject
) -> None:
    q = InMemoryJobQueue(capacity=-1, clock=Clock())
    jobs = [
        Job(job_id=f"j{n}", model_ref="m", prompt="p", params=JobParams(max_tokens=1), priority=p)
        for n, p in enumerate(priorities)
    ]
    for j in jobs:
        q.enqueue(j)
    to_cancel = data.draw(st.sets(st.sampled_from([j.job_id for j in jobs]))) if jobs else set()
    left: list[str] = []
    for job_id in to_cancel:
        left.append(q.cancel(job_id, now=1.0).job_id)
    while (got := q.dequeue()) is not None:
        left.append(got.job_id)
    assert sorted(left) == sorted(j.job_id for j in jobs)
