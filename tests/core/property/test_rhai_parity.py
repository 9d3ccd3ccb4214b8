"""Parity: the Rhai twin of the built-in policy (examples/policies/platform_twin.rhai) makes
the same decisions as the built-in scheduler on random clusters.

The clusters mix online, degraded and offline pools (some restricted to a few models), GPUs
of several sizes, workers in every status with one to three slots, models that are in the
catalog, known only from workers, or unknown, tenants with quotas (enforced or not, wait or
reject), interactive, batch and promoted batch jobs, and LRU/LFU/manual eviction with or
without a minimum idle time; half of them are crowded (small, full GPUs) so that cold
models need evictions or drains. So the comparison covers dispatch, quota waits and
rejects, cold starts, scale-out, evictions (never of a worker needed ahead), drains of the
workers blocking a model that waited over a minute, NO_CAPACITY and MODEL_NOT_FOUND rejects
and every wait reason. Workers span one or two GPUs and a worker's share may exceed a small
GPU (an over-committed GPU): both schedulers count VRAM per GPU by one rule
(``placeable_vram``), and neither makes a decision that validate_decision refuses.

The only freedom allowed: consecutive rejects may come in another order (the built-in
scheduler walks a model's jobs tenant by tenant, the twin in queue order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orchestrator_core import OrchestratorConfig
from orchestrator_core.jobs import Job, JobParams, JobStatus
from orchestrator_core.rhai import RhaiScheduler
from orchestrator_core.scheduling import (
    Batch,
    BuiltinScheduler,
    Decision,
    Reject,
    build_eviction,
    decision_from_dict,
    iter_actions,
    validate_decision,
)
from orchestrator_core.scheduling.state import ClusterState
from orchestrator_core.testing import cluster

TWIN = (Path(__file__).parents[3] / "examples" / "policies" / "platform_twin.rhai").read_text()

MODELS = ["m0", "m1", "m2", "m3", "m4"]  # m4 is in no catalog
VRAM_GB = [0, 4, 8, 16, 16, 30, 50, 100]
STATUSES = ["ready", "ready", "ready", "ready", "busy", "starting", "draining", "failed"]
JOB_MODELS = ["m0", "m0", "m1", "m1", "m2", "m3", "m3", "m4", "m0-alias", "m1-alias"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ClusterState, float, str, float]:
    # crowded clusters: small, full GPUs, so that cold models need evictions or drains
    crowded = draw(st.booleans())
    enforce = draw(st.sampled_from([True, True, False]))
    quota_action = draw(st.sampled_from(["wait", "reject"]))
    builder = cluster(enforce_quotas=enforce, quota_action=quota_action)
    for m in MODELS[:4]:
        if draw(st.integers(0, 5)) > 0:
            aliases = [f"{m}-alias"] if draw(st.booleans()) else []
            vram = draw(st.sampled_from([8, 12, 16] if crowded else VRAM_GB))
            builder.model(m, vram_gb=vram, aliases=aliases)
    tenants = ["t0", "t1", "t2"]
    for t in tenants:
        if draw(st.booleans()):
            builder.tenant(t, max_running=draw(st.sampled_from([None, 0, 1, 1, 2, 3])))
    n_pools = draw(st.sampled_from([0, 1, 1, 2, 2, 3]))
    wid = 0
    for p in range(n_pools):
        status = draw(st.sampled_from(["online", "online", "degraded", "offline"]))
        loadable = draw(st.lists(st.sampled_from(MODELS[:4]), max_size=2, unique=True))
        builder.pool(f"p{p}", status=status, models=loadable)
        n_gpus = draw(st.sampled_from([0, 1, 1, 2, 3]))
        for g in range(n_gpus):
            sizes = [24] if crowded else [8, 24, 48, 80]
            builder.gpu(f"g{g}", vram_gb=draw(st.sampled_from(sizes)))
        for _ in range(draw(st.integers(0, 5))):
            model = draw(
                st.sampled_from(
                    ["m0", "m1", "m2", "m4"] if crowded or draw(st.booleans()) else MODELS
                )
            )
            slots = draw(st.integers(1, 3))
            gpus = (
                []
                if n_gpus == 0
                else draw(
                    st.lists(
                        st.sampled_from([f"g{g}" for g in range(n_gpus)]),
                        min_size=1,
                        max_size=2,
                        unique=True,
                    )
                )
            )
            builder.worker(
                f"w{wid}",
                model,
                gpu=gpus,
                status=draw(st.sampled_from(STATUSES)),
                vram_gb=draw(st.sampled_from([10.0, 12.0] if crowded else [None, 2.0, 10.0, 20.0])),
                active=draw(st.sampled_from([0, 0, slots, draw(st.integers(0, slots))])),
                slots=slots,
                last_used_at=draw(st.sampled_from([None, 100.0, 500.0, 900.0, 990.0])),
                jobs_completed=draw(st.integers(0, 5)),
            )
            wid += 1
    n_jobs = draw(st.integers(0, 25))
    for j in range(n_jobs):
        model = draw(st.sampled_from(["m3", "m3", "m3", "m0", "m1"] if crowded else JOB_MODELS))
        builder.job(
            f"j{j:02d}",
            model,
            priority=draw(st.sampled_from(["interactive", "batch"])),
            tenant=draw(st.sampled_from([None, *tenants, *tenants])),
            queued_at=float(draw(st.integers(0, 999))),
        )
    state = builder.build()
    for i in range(draw(st.integers(0, 3))):
        tenant = draw(st.sampled_from(tenants))
        job = Job(
            job_id=f"running-{i}",
            model_ref="m0",
            prompt=None,
            params=JobParams(max_tokens=1),
            status=JobStatus.RUNNING,
            tenant_id=tenant,
        )
        state.restore_running(job, worker_id="elsewhere")
    eviction = draw(st.sampled_from(["lru", "lfu", "manual"]))
    min_idle = draw(st.sampled_from([0.0, 0.0, 200.0]))
    state.config = OrchestratorConfig.from_mapping(
        {"eviction": {"policy": eviction, "min_idle_s": min_idle}}
    )
    return state, 1000.0, eviction, min_idle


def normalized(decision: Decision) -> list[Any]:
    """Actions in order, runs of consecutive rejects sorted by job id."""
    out: list[Any] = []
    run: list[Reject] = []
    for act in iter_actions(decision):
        if isinstance(act, Reject):
            run.append(act)
            continue
        out.extend(sorted(run, key=lambda r: r.job_id))
        run = []
        out.append(act)
    out.extend(sorted(run, key=lambda r: r.job_id))
    return out


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_the_rhai_twin_decides_like_the_builtin_scheduler(
    scenario: tuple[ClusterState, float, str, float],
) -> None:
    state, now, eviction, min_idle = scenario
    builtin = BuiltinScheduler(
        name="priority",
        order="priority",
        placement="least-loaded",
        eviction=build_eviction(eviction, min_idle),
    )
    twin = RhaiScheduler(TWIN, name="platform_twin.rhai", fallback=builtin)
    snapshot = state.snapshot(now)
    expected = builtin.schedule(snapshot)
    call = twin.run(snapshot)
    assert not snapshot.to_ctx()["queue_info"]["truncated"]
    assert call.failure is None, call.failure
    assert validate_decision(expected, snapshot) == []
    twin_decision = decision_from_dict(call.returned)
    assert normalized(twin_decision) == normalized(expected)
    assert isinstance(twin_decision, Batch) == isinstance(expected, Batch)
