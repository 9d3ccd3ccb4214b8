"""Scheduling invariants over random clusters and queues (hypothesis).

Single decisions: never dispatch to a busy/starting worker, to a worker without the model or
to an offline pool; never evict a busy worker; never over-commit a GPU's VRAM; within a model
jobs go in queue order; no free worker is left idle next to a job it could run. With
workers on several GPUs (shares that may exceed a GPU), over a few cycles: the built-in never
makes a decision its validator refuses, never starts a model on a GPU that cannot hold it,
and rejects NO_CAPACITY only when no GPU could ever hold the model.

Simulations (decisions applied cycle after cycle, pools reporting back by heartbeat):
interactive jobs go before batch jobs that arrived later unless promotion applies; two
tenants of equal weight with endless backlog get dispatch counts that differ by at most a
small constant over any window; every job is eventually dispatched or rejected when
capacity exists.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from orchestrator_core import ErrorCode, PoolInfo, WorkerInfo, WorkerStatus
from orchestrator_core.scheduling import (
    PENDING_PREFIX,
    BuiltinScheduler,
    ClusterState,
    Dispatch,
    EvictWorker,
    FairShareOrder,
    FifoOrder,
    LeastLoadedPlacement,
    LfuEviction,
    LruEviction,
    ManualEviction,
    MostVramFreePlacement,
    PriorityOrder,
    Reject,
    RoundRobinPlacement,
    StartWorker,
    iter_actions,
    validate_decision,
)
from orchestrator_core.testing import GB, ClusterBuilder, cluster, make_gpu, make_job, make_worker

MODELS = {"a": 4, "b": 8, "c": 16, "d": 30, "huge": 120}  # VRAM in GB
SERVED = ["a", "b", "c", "d"]
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIMS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

orders = st.sampled_from(["fifo", "priority", "fair-share"])
placements = st.sampled_from([LeastLoadedPlacement, MostVramFreePlacement, RoundRobinPlacement])
evictions = st.sampled_from([LruEviction, LfuEviction, ManualEviction])


def make_order(name: str, promote_after_s: float | None = 50.0) -> object:
    if name == "fifo":
        return FifoOrder()
    if name == "priority":
        return PriorityOrder(promote_after_s)
    return FairShareOrder(promote_after_s=promote_after_s)


@st.composite
def clusters(
    draw: st.DrawFn,
    *,
    pool_statuses: tuple[str, ...] = ("online", "online", "degraded", "offline"),
    worker_statuses: tuple[str, ...] = ("ready", "ready", "busy", "starting", "draining", "failed"),
    quotas: bool = True,
    max_jobs: int = 25,
) -> ClusterBuilder:
    enforce = quotas and draw(st.booleans())
    b = cluster(
        order=make_order(draw(orders)),  # type: ignore[arg-type]
        placement=draw(placements)(),
        enforce_quotas=enforce,
        quota_action=draw(st.sampled_from(["wait", "reject"])),
    )
    for name, size in MODELS.items():
        b.model(name, vram_gb=size)
    b.tenant("t0", max_running=draw(st.integers(0, 3)))
    b.tenant("t1", weight=2.0)
    wid = 0
    for p in range(draw(st.integers(1, 3))):
        restricted = draw(st.booleans())
        models = (
            draw(st.lists(st.sampled_from(SERVED), max_size=3, unique=True)) if restricted else []
        )
        b.pool(f"p{p}", status=draw(st.sampled_from(pool_statuses)), models=models)
        for g in range(draw(st.integers(1, 3))):
            total = draw(st.sampled_from([8, 16, 24, 48, 80]))
            b.gpu(f"g{g}", vram_gb=total)
            used = 0
            for _ in range(draw(st.integers(0, 3))):
                model = draw(st.sampled_from(SERVED))
                if used + MODELS[model] > total:
                    continue
                used += MODELS[model]
                slots = draw(st.integers(1, 2))
                status = draw(st.sampled_from(worker_statuses))
                b.worker(
                    f"w{wid}",
                    model,
                    status=status,
                    slots=slots,
                    active=draw(st.integers(0, slots - 1)) if status == "ready" else 0,
                    last_used_at=draw(st.none() | st.floats(0, 900)),
                    jobs_completed=draw(st.integers(0, 20)),
                )
                wid += 1
    for j in range(draw(st.integers(0, max_jobs))):
        b.job(
            f"j{j}",
            draw(st.sampled_from([*SERVED, *SERVED, "huge", "mystery"])),
            priority=draw(st.sampled_from(["interactive", "batch"])),
            tenant=draw(st.sampled_from([None, "t0", "t1", "t2"])),
            queued_at=draw(st.floats(0, 990)),
        )
    return b


def scheduler_for(draw: st.DrawFn) -> BuiltinScheduler:
    return BuiltinScheduler(eviction=draw(evictions)(), scale_out=draw(st.booleans()))


def check_vram(state: ClusterState) -> None:
    for pool_id in state.pool_ids():
        pool = state.pool_view(pool_id)
        assert pool is not None
        for gpu_id in pool.gpu_ids:
            gpu = state.gpu_view(pool_id, gpu_id)
            assert gpu is not None
            assert gpu.vram_allocated_bytes <= gpu.vram_total_bytes, gpu


# -- one decision --------------------------------------------------------------------------


@PROPS
@given(data=st.data())
def test_a_decision_is_always_valid_and_keeps_every_invariant(data: st.DataObject) -> None:
    state = data.draw(clusters()).build()
    scheduler = BuiltinScheduler(
        eviction=data.draw(evictions)(),
        scale_out=data.draw(st.booleans()),
        drain_after_s=data.draw(st.sampled_from([None, 60.0])),
    )
    now = 1000.0
    snap = state.snapshot(now)
    decision = scheduler.schedule(snap)
    assert validate_decision(decision, snap) == []
    actions = iter_actions(decision)
    positions = {q.job_id: state.position(q.job_id) for q in state.ordered_jobs()}
    used: Counter[str] = Counter()
    dispatched_to: set[str] = set()
    for act in actions:
        if isinstance(act, Dispatch):
            worker = state.worker_view(act.worker_id)
            job = state.get_job(act.job_id)
            assert worker is not None and job is not None
            pool = state.pool_view(worker.pool_id)
            assert pool is not None and str(pool.status) != "offline"
            assert worker.status is WorkerStatus.READY
            assert job.model_ref == worker.model_ref
            used[worker.worker_id] += 1
            assert used[worker.worker_id] <= worker.free_slots
            dispatched_to.add(worker.worker_id)
        elif isinstance(act, EvictWorker):
            worker = state.worker_view(act.worker_id)
            assert worker is not None
            assert worker.status is WorkerStatus.READY and worker.active_jobs == 0
            assert act.worker_id not in dispatched_to
            assert not isinstance(scheduler.eviction, ManualEviction)
        elif isinstance(act, Reject):
            assert act.code in (
                ErrorCode.NO_CAPACITY,
                ErrorCode.MODEL_NOT_FOUND,
                ErrorCode.QUOTA_EXCEEDED,
            )
    before = {q.job_id: q for q in state.ordered_jobs()}
    state.apply(decision, now=now)
    assert state.self_check() == []
    check_vram(state)
    if state.enforce_quotas or len(actions) >= scheduler.max_actions:
        return
    # without draining (which keeps chosen workers free on purpose):
    # within a model, dispatched jobs precede the jobs that stay queued
    taken = {a.job_id for a in actions if isinstance(a, Dispatch)}
    for model in {before[j].model_ref for j in taken}:
        last_taken = max(positions[j] for j in taken if before[j].model_ref == model)
        waiting = [positions[q.job_id] for q in state.ordered_jobs() if q.model_ref == model]
        assert all(p > last_taken for p in waiting)
    # no free worker is left next to a queued job of its model
    for q in state.ordered_jobs():
        if scheduler.drain_after_s is None:
            assert state.free_workers(q.model_ref, 1) == [], q


# -- workers on several GPUs ---------------------------------------------------------------

WIDE_MODELS = {"a": 4, "b": 8, "c": 10, "d": 16, "e": 20, "huge": 40}  # VRAM in GB
WIDE_PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def wide_clusters(draw: st.DrawFn) -> ClusterBuilder:
    """Small GPUs and workers spanning up to three of them, whose VRAM may exceed the GPUs
    (over-committed GPUs, as a pool reporting an uneven split shows them); pools may report
    less free VRAM than the workers leave (other processes); models known only from
    workers; idle, busy, starting and draining workers; one to three cycles."""
    b = cluster(
        order=make_order(draw(orders)),  # type: ignore[arg-type]
        placement=draw(placements)(),
        enforce_quotas=draw(st.booleans()),
        quota_action=draw(st.sampled_from(["wait", "reject"])),
    )
    for name, size in WIDE_MODELS.items():
        b.model(name, vram_gb=size)
    b.tenant("t0", max_running=draw(st.integers(0, 2)))
    served = [*WIDE_MODELS, "z"]  # z: no catalog entry, known from its workers
    wid = 0
    for p in range(draw(st.integers(1, 3))):
        models = draw(st.lists(st.sampled_from(served), max_size=3, unique=True))
        b.pool(
            f"p{p}",
            status=draw(st.sampled_from(["online", "online", "degraded", "offline"])),
            models=models if draw(st.booleans()) else [],
        )
        gpu_ids = [f"g{g}" for g in range(draw(st.integers(1, 4)))]
        for gid in gpu_ids:
            total = draw(st.sampled_from([8, 12, 16, 24]))
            free = draw(st.none() | st.sampled_from([0, 2, 6, 12]))
            b.gpu(gid, vram_gb=total, free_gb=free)
        for _ in range(draw(st.integers(0, 6))):
            slots = draw(st.integers(1, 2))
            status = draw(
                st.sampled_from(["ready", "ready", "ready", "busy", "starting", "draining"])
            )
            b.worker(
                f"w{wid}",
                draw(st.sampled_from(served)),
                gpu=draw(st.lists(st.sampled_from(gpu_ids), min_size=1, max_size=3, unique=True)),
                vram_gb=draw(st.sampled_from([None, 4.0, 10.0, 20.0, 30.0])),
                status=status,
                slots=slots,
                active=draw(st.integers(0, slots - 1)) if status == "ready" else 0,
                last_used_at=draw(st.none() | st.sampled_from([10.0, 500.0, 990.0])),
                jobs_completed=draw(st.integers(0, 5)),
            )
            wid += 1
    for j in range(draw(st.integers(0, 15))):
        b.job(
            f"j{j}",
            draw(st.sampled_from([*served, "c", "d", "mystery"])),
            priority=draw(st.sampled_from(["interactive", "batch"])),
            tenant=draw(st.sampled_from([None, "t0", "t1"])),
            queued_at=draw(st.sampled_from([0.0, 500.0, 990.0])),
        )
    return b


def loadable_gpu_totals(state: ClusterState, model_ref: str) -> list[int]:
    """Sizes of every GPU, in any pool, that could load ``model_ref``."""
    totals = []
    for pool_id in state.pool_ids():
        pool = state.pool_view(pool_id)
        assert pool is not None
        if state.pool_can_load(pool_id, model_ref):
            for gid in pool.gpu_ids:
                gpu = state.gpu_view(pool_id, gid)
                assert gpu is not None
                totals.append(gpu.vram_total_bytes)
    return totals


@WIDE_PROPS
@given(data=st.data())
def test_with_workers_on_several_gpus_the_builtin_never_refuses_its_own_decision(
    data: st.DataObject,
) -> None:
    """Every built-in decision passes validate_decision on its snapshot; a start goes on a
    GPU that can hold the model once the planned evictions are done (a start that needs VRAM
    never leaves its GPU over-committed); NO_CAPACITY only when no GPU could ever hold it."""
    state = data.draw(wide_clusters()).build()
    scheduler = BuiltinScheduler(
        eviction=data.draw(evictions)(data.draw(st.sampled_from([0.0, 0.0, 200.0]))),
        scale_out=data.draw(st.booleans()),
        drain_after_s=data.draw(st.sampled_from([None, 60.0])),
    )
    now = 1000.0
    for _cycle in range(data.draw(st.integers(1, 3))):
        snap = state.snapshot(now)
        decision = scheduler.schedule(snap)
        note(f"decision: {decision!r}")
        assert validate_decision(decision, snap) == []
        starts: set[tuple[str, str]] = set()
        for act in iter_actions(decision):
            if isinstance(act, StartWorker):
                need = state.model_vram(act.model_ref)
                gpu = state.gpu_view(act.pool_id, act.gpu_id)
                assert gpu is not None and gpu.vram_total_bytes >= need, (act, gpu)
                if need > 0:
                    starts.add((act.pool_id, act.gpu_id))
            elif isinstance(act, Reject) and act.code is ErrorCode.NO_CAPACITY:
                job = state.get_job(act.job_id)
                assert job is not None
                need = state.model_vram(job.model_ref)
                assert all(t < need for t in loadable_gpu_totals(state, job.model_ref)), act
        state.apply(decision, now=now)
        assert state.self_check() == []
        for pool_id, gpu_id in starts:
            gpu = state.gpu_view(pool_id, gpu_id)
            assert gpu is not None
            assert gpu.vram_allocated_bytes <= gpu.vram_total_bytes, gpu
        now += 1.0


# -- simulations ---------------------------------------------------------------------------


@dataclass
class World:
    """The pools' side of the simulation: what workers really exist and what they do."""

    state: ClusterState
    scheduler: BuiltinScheduler
    truth: dict[str, PoolInfo]
    rng: random.Random
    now: float = 1000.0
    running: dict[str, str] = field(default_factory=dict)  # job -> worker
    starts: list[tuple[str, StartWorker]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)
    rejected: dict[str, ErrorCode] = field(default_factory=dict)
    cycles: int = 0
    next_id: int = 0

    def worker(self, worker_id: str) -> tuple[PoolInfo, int] | None:
        for pool in self.truth.values():
            for i, w in enumerate(pool.workers):
                if w.worker_id == worker_id:
                    return pool, i
        return None

    def heartbeat(self, pool: PoolInfo) -> None:
        gpus = []
        for g in pool.gpus:
            used = sum(
                w.vram_bytes // len(w.gpu_ids) for w in pool.workers if g.gpu_id in w.gpu_ids
            )
            gpus.append(
                make_gpu(
                    g.gpu_id,
                    vram_gb=g.vram_total_bytes / GB,
                    free_gb=(g.vram_total_bytes - used) / GB,
                )
            )
        self.truth[pool.pool_id] = pool.model_copy(
            update={"gpus": gpus, "last_heartbeat": self.now}
        )
        self.state.upsert_pool(self.truth[pool.pool_id].model_copy(deep=True))

    def step(self, *, finish: float = 1.0) -> list[str]:
        """One cycle: decide, check, apply, then let the world move. Returns dispatched jobs."""
        snap = self.state.snapshot(self.now)
        decision = self.scheduler.schedule(snap)
        assert validate_decision(decision, snap) == []
        placeholders = iter(self.state.apply(decision, now=self.now))
        check_vram(self.state)
        out = []
        for act in iter_actions(decision):
            if isinstance(act, Dispatch):
                out.append(act.job_id)
                self.running[act.job_id] = act.worker_id
                found = self.worker(act.worker_id)
                assert found is not None, act
                pool, i = found
                w = pool.workers[i]
                pool.workers[i] = w.model_copy(
                    update={
                        "active_jobs": w.active_jobs + 1,
                        "status": WorkerStatus.BUSY
                        if w.active_jobs + 1 >= w.max_concurrency
                        else WorkerStatus.READY,
                    }
                )
            elif isinstance(act, Reject):
                self.rejected[act.job_id] = act.code
            elif isinstance(act, StartWorker):
                self.starts.append((next(placeholders), act))
            elif isinstance(act, EvictWorker):
                self.stops.append(act.worker_id)
        self.dispatched.extend(out)
        self.now += 1.0
        self.cycles += 1
        self._move(finish)
        return out

    def _move(self, finish: float) -> None:
        rng, state = self.rng, self.state
        for job_id, worker_id in list(self.running.items()):
            if rng.random() >= finish:
                continue
            del self.running[job_id]
            state.job_finished(job_id, now=self.now)
            found = self.worker(worker_id)
            if found is not None:
                pool, i = found
                w = pool.workers[i]
                pool.workers[i] = w.model_copy(
                    update={"active_jobs": w.active_jobs - 1, "status": WorkerStatus.READY}
                )
        for worker_id in self.stops:
            found = self.worker(worker_id)
            if found is not None:
                pool, i = found
                del pool.workers[i]
            state.remove_worker(worker_id)
        self.stops = []
        for pool in self.truth.values():  # starting workers finish loading; failed ones go
            for i, w in enumerate(pool.workers):
                if w.status is WorkerStatus.STARTING or (
                    w.status is WorkerStatus.BUSY and w.active_jobs == 0
                ):
                    pool.workers[i] = w.model_copy(update={"status": WorkerStatus.READY})
            pool.workers[:] = [
                w
                for w in pool.workers
                if w.status not in (WorkerStatus.FAILED, WorkerStatus.DRAINING)
            ]
        for placeholder, act in self.starts:
            self.next_id += 1
            worker_id = f"new{self.next_id}"
            vram = state.model_vram(act.model_ref)
            self.truth[act.pool_id].workers.append(_worker(worker_id, act, vram))
            state.start_confirmed(placeholder, worker_id)
        self.starts = []
        for pool in self.truth.values():  # the pools' real VRAM is never over-committed either
            for g in pool.gpus:
                used = sum(
                    w.vram_bytes // len(w.gpu_ids) for w in pool.workers if g.gpu_id in w.gpu_ids
                )
                assert used <= g.vram_total_bytes, (pool.pool_id, g.gpu_id)
        for pool in list(self.truth.values()):
            if rng.random() < 0.6:
                self.heartbeat(pool)
        assert state.self_check() == []


def _worker(worker_id: str, act: StartWorker, vram_bytes: int) -> WorkerInfo:
    return make_worker(
        worker_id, act.model_ref, gpus=[act.gpu_id], status="starting", vram_gb=vram_bytes / GB
    )


def world(b: ClusterBuilder, scheduler: BuiltinScheduler, seed: int) -> World:
    return World(
        state=b.build(),
        scheduler=scheduler,
        truth={p.pool_id: p for p in b.pool_infos()},
        rng=random.Random(seed),
    )


LIVE_CLUSTERS = clusters(
    pool_statuses=("online", "online", "degraded"),
    worker_statuses=("ready", "ready", "busy", "starting", "failed"),
    quotas=False,
    max_jobs=40,
)


@st.composite
def tight_clusters(draw: st.DrawFn) -> ClusterBuilder:
    """One or two small GPUs, several models: most starts need an eviction."""
    b = cluster(order=make_order(draw(orders)), placement=draw(placements)())  # type: ignore[arg-type]
    for name, size in MODELS.items():
        b.model(name, vram_gb=size)
    b.pool("p")
    for g in range(draw(st.integers(1, 2))):
        b.gpu(f"g{g}", vram_gb=draw(st.sampled_from([16, 24, 32])))
        b.worker(f"w{g}", draw(st.sampled_from(["a", "b"])), last_used_at=0.0)
    for j in range(draw(st.integers(1, 40))):
        b.job(
            f"j{j}",
            draw(st.sampled_from(["a", "b", "c"])),
            priority=draw(st.sampled_from(["interactive", "batch"])),
        )
    return b


@SIMS
@given(
    b=LIVE_CLUSTERS | tight_clusters(),
    eviction=st.sampled_from([LruEviction, LfuEviction]),
    scale_out=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_job_is_eventually_dispatched_or_rejected_when_capacity_exists(
    b: ClusterBuilder, eviction: type, scale_out: bool, seed: int
) -> None:
    note(f"{b!r}\neviction={eviction.__name__} scale_out={scale_out} seed={seed}")
    w = world(b, BuiltinScheduler(eviction=eviction(), scale_out=scale_out), seed)
    jobs = {q.job_id: q.model_ref for q in w.state.ordered_jobs()}
    for _ in range(300):
        if not len(w.state) and not w.running:
            break
        w.step(finish=0.7)
    assert len(w.state) == 0, [
        (q.job_id, q.model_ref, BuiltinScheduler().explain_job(w.state.snapshot(w.now), q.job_id))
        for q in w.state.ordered_jobs()
    ]
    assert set(w.dispatched) | set(w.rejected) == set(jobs)
    for job_id, code in w.rejected.items():
        model = jobs[job_id]
        if code is ErrorCode.MODEL_NOT_FOUND:
            assert model == "mystery"
        else:
            assert code is ErrorCode.NO_CAPACITY
            assert not any(
                (not p.models or model in p.models)
                and any(g.vram_total_bytes >= MODELS[model] * GB for g in p.gpus)
                for p in w.truth.values()
            ), model


def single_model_world(workers: int, order: object, seed: int, *, scale_out: bool = True) -> World:
    b = cluster(order=order).model("m", vram_gb=1).pool("p").gpu("g0", vram_gb=80)  # type: ignore[arg-type]
    for i in range(workers):
        b.worker(f"w{i}", "m")
    return world(b, BuiltinScheduler(scale_out=scale_out), seed)


@SIMS
@given(
    workers=st.integers(1, 3),
    arrivals=st.lists(
        st.tuples(st.sampled_from(["interactive", "batch"]), st.integers(0, 40)),
        min_size=1,
        max_size=40,
    ),
    promote=st.sampled_from([None, 5.0, 15.0]),
    seed=st.integers(0, 2**16),
)
def test_interactive_jobs_go_before_later_batch_jobs_unless_promotion_applies(
    workers: int, arrivals: list[tuple[str, int]], promote: float | None, seed: int
) -> None:
    w = single_model_world(workers, PriorityOrder(promote), seed)
    pending = sorted((at, i, prio) for i, (prio, at) in enumerate(arrivals))  # arrival order
    for _ in range(200):
        while pending and pending[0][0] <= w.now - 1000.0:
            at, i, prio = pending.pop(0)
            w.state.add_job(make_job(f"j{i}", "m", priority=prio, queued_at=1000.0 + at))
        queued = {q.job_id: q for q in w.state.ordered_jobs()}
        promoted = {
            j
            for j, q in queued.items()
            if promote is not None and q.priority == "batch" and w.now - q.queued_at >= promote
        }
        taken = w.step(finish=0.5)
        for job_id in taken:
            job = queued[job_id]
            if job.priority != "batch":
                continue
            others = [
                q for j, q in queued.items() if j not in taken and q.priority == "interactive"
            ]
            if job_id in promoted:
                assert all(q.queued_at >= job.queued_at for q in others), job
            else:
                assert others == [], job
        if not pending and not len(w.state):
            break
    assert not len(w.state)


@SIMS
@given(
    workers=st.integers(1, 4),
    bursts=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=5, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_two_equal_tenants_with_endless_backlog_share_dispatches_evenly_over_any_window(
    workers: int, bursts: list[tuple[int, int]], seed: int
) -> None:
    # a fixed fleet, and more queued jobs per tenant than one cycle can dispatch: endless backlog
    w = single_model_world(workers, FairShareOrder(promote_after_s=None), seed, scale_out=False)
    counter = 0
    sequence: list[str] = []
    tenants = {}
    for cycle in range(60):
        queued = Counter(q.tenant_id for q in w.state.ordered_jobs())
        burst = bursts[cycle % len(bursts)]
        for tenant, size in (("a", burst[0]), ("b", burst[1])):
            if queued[tenant] < 2 * workers:  # keep both backlogged, in uneven bursts
                for _ in range(size + 2 * workers):
                    counter += 1
                    job_id = f"{tenant}{counter}"
                    tenants[job_id] = tenant
                    w.state.add_job(make_job(job_id, "m", tenant=tenant, queued_at=w.now))
        sequence.extend(tenants[j] for j in w.step(finish=w.rng.choice([0.3, 0.7, 1.0])))
    assert len(sequence) > 20
    diff = lo = hi = 0
    for tenant in sequence:  # any window's difference is bounded by the range of prefix diffs
        diff += 1 if tenant == "a" else -1
        lo, hi = min(lo, diff), max(hi, diff)
    assert hi - lo <= 2, sequence


@SIMS
@given(workers=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_weights_two_to_one_give_two_thirds_of_the_dispatches(workers: int, seed: int) -> None:
    order = FairShareOrder(weights={"a": 2.0, "b": 1.0}, promote_after_s=None)
    w = single_model_world(workers, order, seed)
    for i in range(150):
        w.state.add_job(make_job(f"a{i}", "m", tenant="a", queued_at=1.0))
        w.state.add_job(make_job(f"b{i}", "m", tenant="b", queued_at=1.0))
    sequence: list[str] = []
    while len(sequence) < 90:
        sequence.extend(j[0] for j in w.step())
    counts = Counter(sequence[:90])
    assert abs(counts["a"] - 60) <= 2, counts


def test_placeholders_never_leak_into_dispatches() -> None:
    b = cluster().model("m", vram_gb=8).pool("p").gpu("g0", vram_gb=80).job("j1", "m")
    w = world(b, BuiltinScheduler(), 1)
    for _ in range(5):
        for job in w.step():
            assert not w.state.running_worker(job) or not str(
                w.state.running_worker(job)
            ).startswith(PENDING_PREFIX)
    assert w.dispatched == ["j1"]


@PROPS
@given(data=st.data())
def test_the_validator_accepts_a_dispatch_exactly_when_it_is_possible(
    data: st.DataObject,
) -> None:
    state = data.draw(clusters(max_jobs=8)).build()
    snap = state.snapshot(1000.0)
    jobs = [q.job_id for q in state.ordered_jobs()] + ["ghost-job"]
    workers = [*state.worker_ids(), "ghost-worker"]
    job_id = data.draw(st.sampled_from(jobs))
    worker_id = data.draw(st.sampled_from(workers))
    job, worker = state.get_job(job_id), state.worker_view(worker_id)
    pool = None if worker is None else state.pool_view(worker.pool_id)
    tenant = None if job is None else state.tenant_view(job.tenant_key)
    possible = (
        job is not None
        and worker is not None
        and pool is not None
        and str(pool.status) != "offline"
        and worker.status is WorkerStatus.READY
        and worker.free_slots > 0
        and worker.model_ref == job.model_ref
        and not (
            state.enforce_quotas
            and tenant is not None
            and tenant.max_running is not None
            and tenant.running >= tenant.max_running
        )
    )
    refusals = validate_decision(Dispatch(job_id, worker_id), snap)
    assert (refusals == []) is possible, refusals
