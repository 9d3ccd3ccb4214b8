"""validate_decision: a decision is checked against the snapshot before it is executed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from orchestrator_core import ErrorCode
from orchestrator_core.scheduling import (
    Batch,
    ClusterState,
    Decision,
    Dispatch,
    EvictWorker,
    RefusalCode,
    Reject,
    StartWorker,
    Wait,
    validate_decision,
)
from orchestrator_core.testing import cluster


def world() -> ClusterState:
    state = (
        cluster(enforce_quotas=True)
        .tenant("capped", max_running=0)
        .model("m", vram_gb=8)
        .model("n", vram_gb=8)
        .model("big", vram_gb=30)
        .pool("p")
        .gpu("g0", vram_gb=32)  # full: four 8 GB workers
        .worker("ready", "m")
        .worker("busy", "m", status="busy")
        .worker("starting", "m", status="starting")
        .worker("multi", "m", slots=2)
        .gpu("g1", vram_gb=16)
        .pool("restricted", models=["n"])
        .gpu("g0", vram_gb=80)
        .pool("off", status="offline")
        .gpu("g0", vram_gb=80)
        .worker("w-off", "m")
        .job("j1", "m")
        .job("j2", "m")
        .job("jn", "n")
        .job("jc", "m", tenant="capped")
        .job("running", "m")
        .build()
    )
    state.job_dispatched("running", "multi", now=1.0)  # multi: 1 of 2 slots used
    return state


@dataclass(frozen=True)
class Case:
    name: str
    decision: Decision
    refusals: list[RefusalCode]
    field: str | None = None


CASES = [
    Case("a dispatch of a queued job to a ready worker is accepted", Dispatch("j1", "ready"), []),
    Case("a wait is always accepted", Wait("idle"), []),
    Case(
        "an unknown job is refused",
        Dispatch("nope", "ready"),
        [RefusalCode.UNKNOWN_JOB],
        "job_id",
    ),
    Case(
        "a job that is already running is refused",
        Dispatch("running", "ready"),
        [RefusalCode.JOB_NOT_QUEUED],
    ),
    Case("an unknown worker is refused", Dispatch("j1", "ghost"), [RefusalCode.UNKNOWN_WORKER]),
    Case("a busy worker is refused", Dispatch("j1", "busy"), [RefusalCode.WORKER_NOT_READY]),
    Case(
        "a starting worker is refused",
        Dispatch("j1", "starting"),
        [RefusalCode.WORKER_NOT_READY],
    ),
    Case(
        "a worker on an offline pool is refused",
        Dispatch("j1", "w-off"),
        [RefusalCode.POOL_OFFLINE],
    ),
    Case(
        "a worker named with the wrong pool is refused",
        Dispatch("j1", "ready", "restricted"),
        [RefusalCode.POOL_MISMATCH],
        "pool_id",
    ),
    Case(
        "a worker serving another model is refused",
        Dispatch("jn", "ready"),
        [RefusalCode.MODEL_MISMATCH],
    ),
    Case(
        "a tenant at its running quota is refused",
        Dispatch("jc", "ready"),
        [RefusalCode.OVER_QUOTA],
    ),
    Case(
        "a batch dispatching two jobs to one single-slot worker is refused",
        Batch((Dispatch("j1", "ready"), Dispatch("j2", "ready"))),
        [RefusalCode.WORKER_FULL],
        "actions[1].worker_id",
    ),
    Case(
        "a batch filling the free slot of a two-slot worker once is accepted",
        Batch((Dispatch("j1", "multi"), Dispatch("j2", "ready"))),
        [],
    ),
    Case(
        "a batch going past the free slots of a two-slot worker is refused",
        Batch((Dispatch("j1", "multi"), Dispatch("j2", "multi"))),
        [RefusalCode.WORKER_FULL],
    ),
    Case(
        "a batch using one job twice is refused",
        Batch((Dispatch("j1", "ready"), Reject("j1", ErrorCode.NO_CAPACITY))),
        [RefusalCode.DUPLICATE_JOB],
    ),
    Case(
        "a start where the model fits is accepted",
        StartWorker("p", "g1", "m"),
        [],
    ),
    Case(
        "a start on an unknown pool is refused",
        StartWorker("nowhere", "g0", "m"),
        [RefusalCode.UNKNOWN_POOL],
        "pool_id",
    ),
    Case(
        "a start on an unknown GPU is refused",
        StartWorker("p", "g9", "m"),
        [RefusalCode.UNKNOWN_GPU],
        "gpu_id",
    ),
    Case(
        "a start of an unknown model is refused",
        StartWorker("p", "g1", "mystery"),
        [RefusalCode.UNKNOWN_MODEL],
        "model_ref",
    ),
    Case(
        "a start on an offline pool is refused",
        StartWorker("off", "g0", "m"),
        [RefusalCode.POOL_OFFLINE],
    ),
    Case(
        "a start on a pool that cannot load the model is refused",
        StartWorker("restricted", "g0", "m"),
        [RefusalCode.MODEL_NOT_LOADABLE],
    ),
    Case(
        "a start needing more VRAM than the GPU has free is refused",
        StartWorker("p", "g1", "big"),
        [RefusalCode.INSUFFICIENT_VRAM],
        "gpu_id",
    ),
    Case(
        "two starts that together over-commit a GPU are refused",
        Batch(
            (StartWorker("p", "g1", "m"), StartWorker("p", "g1", "n"), StartWorker("p", "g1", "m"))
        ),
        [RefusalCode.INSUFFICIENT_VRAM],
        "actions[2].gpu_id",
    ),
    Case(
        "a start using VRAM that an earlier eviction of the batch frees is accepted",
        Batch((EvictWorker("ready"), StartWorker("p", "g0", "n"))),
        [],
    ),
    Case(
        "an idle worker may be evicted",
        EvictWorker("ready", "p"),
        [],
    ),
    Case(
        "evicting a busy worker is refused",
        EvictWorker("busy"),
        [RefusalCode.EVICT_BUSY_WORKER],
    ),
    Case(
        "evicting a worker with an active job is refused",
        EvictWorker("multi"),
        [RefusalCode.EVICT_BUSY_WORKER],
    ),
    Case(
        "evicting a worker the batch just dispatched to is refused",
        Batch((Dispatch("j1", "ready"), EvictWorker("ready"))),
        [RefusalCode.EVICT_BUSY_WORKER],
    ),
    Case(
        "dispatching to a worker the batch evicted is refused",
        Batch((EvictWorker("ready"), Dispatch("j1", "ready"))),
        [RefusalCode.WORKER_EVICTED],
    ),
    Case(
        "a reject with a stable scheduling code is accepted",
        Reject("j1", ErrorCode.NO_CAPACITY),
        [],
    ),
    Case(
        "a reject with a code a scheduler may not use is refused",
        Reject("j1", ErrorCode.WORKER_FAILED),
        [RefusalCode.CODE_NOT_ALLOWED],
        "code",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate_decision(case: Case) -> None:
    state = world()
    refusals = validate_decision(case.decision, state.snapshot(10.0))
    assert [r.code for r in refusals] == case.refusals
    if case.field is not None:
        assert refusals[0].field == case.field
    for r in refusals:
        assert r.message
        assert r.to_dict()["code"] == str(r.code)


def test_a_refusal_in_a_batch_names_the_action_index() -> None:
    state = world()
    refusals = validate_decision(Batch((Wait(), Dispatch("j1", "busy"))), state.snapshot(10.0))
    assert refusals[0].action_index == 1
    assert refusals[0].message.startswith("actions[1]: worker busy is busy")


# -- VRAM of workers on several GPUs ---------------------------------------------------------


def wide_world() -> ClusterState:
    """p/g0 (8 GB) holds a 6 GB share of w-wide and 4 GB of w-small: 2 GB over-committed;
    p/g1 (16 GB) holds the other 6 GB share of w-wide; q/g0 (8 GB) the 10 GB share of the
    20 GB w-huge on q/g0 and q/g1 (16 GB)."""
    return (
        cluster()
        .model("ten", vram_gb=10)
        .model("four", vram_gb=4)
        .pool("p")
        .gpu("g0", vram_gb=8)
        .gpu("g1", vram_gb=16)
        .worker("w-wide", "ten", gpu=["g0", "g1"], vram_gb=12)
        .worker("w-small", "four", gpu="g0", vram_gb=4)
        .pool("q")
        .gpu("g0", vram_gb=8)
        .gpu("g1", vram_gb=16)
        .worker("w-huge", "ten", gpu=["g0", "g1"], vram_gb=20)
        .build()
    )


WIDE_CASES = [
    Case(
        "evicting a worker whose share exceeds its GPU does not make that GPU larger",
        Batch((EvictWorker("w-huge"), StartWorker("q", "g0", "ten"))),
        [RefusalCode.INSUFFICIENT_VRAM],
        "actions[1].gpu_id",
    ),
    Case(
        "evicting it makes room on its other GPU, which is large enough",
        Batch((EvictWorker("w-huge"), StartWorker("q", "g1", "ten"))),
        [],
    ),
    Case(
        "on an over-committed GPU the excess is paid first: evicting 4 GB frees only 2 GB",
        Batch((EvictWorker("w-small"), StartWorker("p", "g0", "four"))),
        [RefusalCode.INSUFFICIENT_VRAM],
    ),
    Case(
        "evicting both workers of the over-committed GPU makes room",
        Batch((EvictWorker("w-small"), EvictWorker("w-wide"), StartWorker("p", "g0", "four"))),
        [],
    ),
    Case(
        "a start reserves its VRAM for the rest of the batch",
        Batch(
            (
                EvictWorker("w-small"),
                EvictWorker("w-wide"),
                StartWorker("p", "g0", "four"),
                StartWorker("p", "g0", "four"),
                StartWorker("p", "g0", "four"),
            )
        ),
        [RefusalCode.INSUFFICIENT_VRAM],
    ),
]


@pytest.mark.parametrize("case", WIDE_CASES, ids=[c.name for c in WIDE_CASES])
def test_validate_decision_counts_a_share_of_a_wide_worker_on_each_gpu(case: Case) -> None:
    state = wide_world()
    refusals = validate_decision(case.decision, state.snapshot(10.0))
    assert [r.code for r in refusals] == case.refusals
    if case.field is not None:
        assert refusals[0].field == case.field
