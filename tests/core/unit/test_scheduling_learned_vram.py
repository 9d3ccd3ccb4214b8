"""``ClusterState.learn_model_vram``: a model the catalog gives no VRAM for looks as if it fit
anywhere; the figure a pool states when it refuses a start (INSUFFICIENT_VRAM or
MODEL_INCOMPATIBLE) lets the built-in policy plan an eviction, or see that nothing can ever
host the model (NO_CAPACITY). The daemon feeds refusals in (tests/acceptance/
test_fleet_placement.py covers that with real processes)."""

from __future__ import annotations

from orchestrator_core import ErrorCode
from orchestrator_core.scheduling import (
    BuiltinScheduler,
    EvictWorker,
    Reject,
    StartWorker,
    iter_actions,
)
from orchestrator_core.testing import cluster

GB = 1_000_000_000


def test_an_unknown_models_vram_is_learned_and_drives_eviction() -> None:
    # m1 (6 GB) idles on a 10 GB GPU; m2 is known only from the pool: its VRAM is unknown.
    state = (
        cluster()
        .model("m1", vram_gb=6)
        .pool("p", models=["m1", "m2"])
        .gpu("g0", vram_gb=10, free_gb=4)
        .worker("w1", "m1", last_used_at=10)
        .job("j1", "m2")
        .build()
    )
    assert state.model_vram("m2") == 0
    before = list(iter_actions(BuiltinScheduler().schedule(state.snapshot(1000.0))))
    assert [type(a) for a in before] == [StartWorker]  # "fits" in 4 GB: the pool would refuse

    assert state.learn_model_vram("m2", 6 * GB) is True
    assert state.learn_model_vram("m2", 5 * GB) is False  # smaller figures are ignored
    assert state.model_vram("m2") == 6 * GB
    after = list(iter_actions(BuiltinScheduler().schedule(state.snapshot(1000.0))))
    assert [type(a) for a in after] == [EvictWorker, StartWorker]
    assert isinstance(after[0], EvictWorker)
    assert after[0].worker_id == "w1"


def test_a_learned_figure_larger_than_any_gpu_rejects_with_no_capacity() -> None:
    state = cluster().pool("p", models=["big"]).gpu("g0", vram_gb=10).job("j1", "big").build()
    assert state.could_ever_fit("big") is True
    state.learn_model_vram("big", 40 * GB)
    assert state.could_ever_fit("big") is False
    actions = list(iter_actions(BuiltinScheduler().schedule(state.snapshot(1000.0))))
    assert len(actions) == 1
    assert isinstance(actions[0], Reject)
    assert actions[0].code is ErrorCode.NO_CAPACITY


def test_the_catalogs_figure_wins_over_a_learned_one() -> None:
    state = cluster().model("m1", vram_gb=6).pool("p").gpu("g0").build()
    state.learn_model_vram("m1", 9 * GB)
    assert state.model_vram("m1") == 6 * GB


def test_a_worker_that_reported_no_vram_counts_the_learned_figure_on_its_gpus_at_once() -> None:
    # w1 reports no VRAM of its own: it counts its model's figure, split over its two GPUs.
    # When the figure is learned later (a refusal, or another pool's heartbeat), its share
    # on g0 and g1 grows with it, so that no start is placed in VRAM it holds.
    state = (
        cluster()
        .pool("p")
        .gpu("g0", vram_gb=8)
        .gpu("g1", vram_gb=8)
        .worker("w1", "m2", gpu=["g0", "g1"], vram_gb=0)
        .build()
    )
    assert state.gpu_view("p", "g1").vram_allocated_bytes == 0  # type: ignore[union-attr]
    state.learn_model_vram("m2", 4 * GB)
    assert state.gpu_view("p", "g1").vram_allocated_bytes == 2 * GB  # type: ignore[union-attr]
    assert state.self_check() == []
    other = cluster().pool("q").gpu("g0", vram_gb=24).worker("w2", "m2", vram_gb=12).pool_infos()
    state.upsert_pool(other[0])
    assert state.model_vram("m2") == 12 * GB
    for gid in ("g0", "g1"):
        gpu = state.gpu_view("p", gid)
        assert gpu is not None
        assert (gpu.vram_allocated_bytes, gpu.vram_free_bytes) == (6 * GB, 2 * GB)
    assert state.self_check() == []
