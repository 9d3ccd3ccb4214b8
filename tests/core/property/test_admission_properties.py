"""Properties of admit() against a plain reference, over random submissions and departures.

The reference keeps the queued jobs as a list in arrival order and decides from the rules
alone: a tenant holding ``max_queued`` queued jobs (with its admissions in flight) is refused;
a full queue (with the admissions in flight) drops the batch job queued earliest that is not
promoted nor due for promotion, or refuses. Whatever admit() decides must match, the queue
never holds more than its capacity, and the position it announces is where the job lands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from orchestrator_core import ErrorCode, Job, Priority
from orchestrator_core.scheduling import (
    AdmissionLimits,
    Admitted,
    ClusterState,
    FifoOrder,
    FullQueuePolicy,
    PriorityOrder,
    admit,
)
from orchestrator_core.testing import make_job

PROMOTE_AFTER = 50.0
TENANTS = ["a", "b", None]


@dataclass
class Reference:
    promote_after: float | None
    jobs: list[Job] = field(default_factory=list)

    def tenant_queued(self, tenant: str) -> int:
        return sum(1 for j in self.jobs if j.tenant_id == tenant)

    def droppable(self, now: float) -> str | None:
        for j in sorted(self.jobs, key=lambda j: j.queued_at):  # stable: arrival order on ties
            if j.priority is not Priority.BATCH:
                continue
            if self.promote_after is not None and now - j.queued_at >= self.promote_after:
                continue  # promoted, or due for promotion
            return j.job_id
        return None


class AdmissionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.counter = 0
        self.state: ClusterState | None = None
        self.ref: Reference | None = None
        self.limits: AdmissionLimits | None = None

    @precondition(lambda self: self.state is None)
    @rule(
        capacity=st.sampled_from([-1, 1, 2, 4, 8]),
        drop=st.booleans(),
        fifo=st.booleans(),
        quota=st.sampled_from([None, 0, 1, 3]),
    )
    def setup(self, capacity: int, drop: bool, fifo: bool, quota: int | None) -> None:
        order = FifoOrder() if fifo else PriorityOrder(PROMOTE_AFTER)
        self.state = ClusterState(order=order)
        self.ref = Reference(None if fifo else PROMOTE_AFTER)
        policy = FullQueuePolicy.DROP_OLDEST_BATCH if drop else FullQueuePolicy.REJECT
        self.limits = AdmissionLimits(capacity, policy, 1, {} if quota is None else {"a": quota})

    @precondition(lambda self: self.state is not None)
    @rule(
        priority=st.sampled_from(list(Priority)),
        tenant=st.sampled_from(TENANTS),
        reserved=st.sampled_from([0, 0, 1, 2]),
        reserved_a=st.sampled_from([0, 0, 1]),
    )
    def submit(
        self, priority: Priority, tenant: str | None, reserved: int, reserved_a: int
    ) -> None:
        assert self.state is not None and self.ref is not None and self.limits is not None
        self.counter += 1
        job = make_job(
            f"j{self.counter}", "m", priority=priority, tenant=tenant, queued_at=self.now
        )
        by_tenant = {"a": reserved_a}
        decision = admit(
            self.state, job, self.limits, reserved=reserved, reserved_by_tenant=by_tenant
        )
        quota = self.limits.max_queued.get(tenant) if tenant is not None else None
        over_quota = (
            quota is not None
            and self.ref.tenant_queued(tenant or "") + (reserved_a if tenant == "a" else 0) >= quota
        )
        cap = self.limits.capacity
        full = cap != -1 and len(self.ref.jobs) + reserved >= cap
        drop = self.limits.full_policy is FullQueuePolicy.DROP_OLDEST_BATCH
        victim = self.ref.droppable(self.now) if full and drop else None
        if over_quota:
            assert not isinstance(decision, Admitted)
            assert decision.error.code is ErrorCode.QUOTA_EXCEEDED
            return
        if full and victim is None:
            assert not isinstance(decision, Admitted)
            assert decision.error.code is ErrorCode.QUEUE_FULL
            return
        assert isinstance(decision, Admitted), decision
        assert decision.dropped == victim
        if victim is not None:
            self.state.remove_job(victim)
            self.ref.jobs = [j for j in self.ref.jobs if j.job_id != victim]
        if reserved:  # the admissions in flight never arrive here: the queue only shrinks
            return
        self.state.add_job(job)
        self.ref.jobs.append(job)
        assert self.state.position(job.job_id) == decision.position

    @precondition(lambda self: self.state is not None and self.ref is not None and self.ref.jobs)
    @rule(pick=st.integers(min_value=0, max_value=100))
    def leave(self, pick: int) -> None:
        assert self.state is not None and self.ref is not None
        job = self.ref.jobs.pop(pick % len(self.ref.jobs))
        self.state.remove_job(job.job_id)

    @precondition(lambda self: self.state is not None)
    @rule(dt=st.sampled_from([0.0, 1.0, 10.0, 49.0, 50.0, 120.0]), snapshot=st.booleans())
    def advance(self, dt: float, snapshot: bool) -> None:
        assert self.state is not None
        self.now += dt
        if snapshot:
            self.state.snapshot(self.now)  # applies due promotions

    @invariant()
    def never_over_capacity_and_same_jobs(self) -> None:
        if self.state is None or self.ref is None or self.limits is None:
            return
        if self.limits.capacity != -1:
            assert len(self.state) <= self.limits.capacity
        assert sorted(j.job_id for j in self.state.ordered_jobs()) == sorted(
            j.job_id for j in self.ref.jobs
        )
        for tenant, quota in self.limits.max_queued.items():
            assert self.state.tenant_queued(tenant) <= quota


AdmissionMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestAdmissionAgainstReference = AdmissionMachine.TestCase
