"""SchedulingSnapshot's read API: what planners read, and refusal once the state changed."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from orchestrator_core import PoolStatus
from orchestrator_core.scheduling import ClusterState, SchedulingSnapshot, SnapshotStale
from orchestrator_core.testing import GB, cluster, make_gpu, make_job, make_pool, make_worker


def build() -> ClusterState:
    state = cluster().model("m", vram_gb=8).model("n", vram_gb=16).build()
    state.upsert_pool(
        make_pool(
            "p",
            gpus=[make_gpu("g0", vram_gb=24), make_gpu("g1", vram_gb=40)],
            workers=[make_worker("w1", "m", vram_gb=8, gpus=["g0"])],
        )
    )
    state.add_job(make_job("j1", "m", tenant="a", queued_at=1.0))
    state.add_job(make_job("j2", "m", tenant="b", queued_at=2.0))
    state.add_job(make_job("j3", "n", tenant="a", queued_at=3.0, priority="batch"))
    return state


def test_planners_read_the_demand_indexes() -> None:
    snap = build().snapshot(10.0)
    assert [m for _key, m in snap.dispatchable_models(0)] == ["m"]
    assert [m for _key, m in snap.cold_models(1)] == ["n"]
    assert [t for _key, t in snap.tenant_heads("m", 0)] == ["a", "b"]
    assert [e[2] for e in snap.tenant_jobs("m", "b", 0)] == ["j2"]
    assert list(snap.tenant_jobs("unknown", "a", 0)) == []
    assert snap.model_tenants("m") == ["a", "b"]
    assert (snap.model_queued("m"), snap.model_demand("n")) == (2, 1)


def test_planners_read_the_fleet_indexes() -> None:
    snap = build().snapshot(10.0)
    lists = snap.free_worker_lists("m")
    assert lists is not None
    assert [wid for _key, wid in lists[0]] == ["w1"]
    assert snap.free_worker_count("m") == 1
    assert snap.free_worker_lists("n") is None
    worker = snap.worker_record("w1")
    assert worker is not None
    assert (snap.worker_vram(worker), snap.worker_share(worker)) == (8 * GB, 8 * GB)
    assert snap.worker_gpu_free(worker) == 16 * GB
    runs = snap.gpu_runs("n", PoolStatus.ONLINE, "free", 16 * GB)
    assert [(pool, gpu) for run in runs for _free, pool, gpu in run] == [("p", "g0"), ("p", "g1")]
    assert snap.gpu_runs("n", PoolStatus.DEGRADED, "free", 0) == []
    gpu = snap.gpu_record("p", "g0")
    assert gpu is not None and gpu.workers == {"w1"}
    assert (snap.largest_gpu(), snap.largest_gpu("n", [PoolStatus.DEGRADED])) == (40 * GB, None)
    assert (snap.pool_count(), snap.pool_ids(), snap.could_ever_fit("n")) == (1, ["p"], True)


ARGS: dict[str, tuple[Any, ...]] = {
    "job": ("j1",),
    "is_running": ("j1",),
    "running_worker": ("j1",),
    "position": ("j1",),
    "class_count": (0,),
    "dispatchable_models": (0,),
    "cold_models": (0,),
    "scaling_models": (0,),
    "tenant_heads": ("m", 0),
    "tenant_jobs": ("m", "a", 0),
    "model_tenants": ("m",),
    "model_queued": ("m",),
    "model_demand": ("m",),
    "tenant": ("a",),
    "worker": ("w1",),
    "pool": ("p",),
    "gpu": ("p", "g0"),
    "pool_revision": ("p",),
    "free_workers": ("m",),
    "live_slots": ("m",),
    "pool_can_load": ("p", "m"),
    "worker_record": ("w1",),
    "gpu_record": ("p", "g0"),
    "free_worker_lists": ("m",),
    "free_worker_count": ("m",),
    "gpu_runs": ("m", PoolStatus.ONLINE, "free", 0),
    "could_ever_fit": ("m",),
    "resolve_model": ("m",),
    "model": ("m",),
    "model_known": ("m",),
    "model_vram": ("m",),
}


def reads() -> list[str]:
    names = []
    for name, member in vars(SchedulingSnapshot).items():
        if name.startswith("_") or name in ("now", "version", "stale"):
            continue
        if inspect.isfunction(member) or isinstance(member, property):
            names.append(name)
    return sorted(names)


def test_every_read_works_on_a_fresh_snapshot() -> None:
    snap = build().snapshot(10.0)
    record = snap.worker_record("w1")
    for name in reads():
        call(snap, name, record)


@pytest.mark.parametrize("name", reads())
def test_every_read_refuses_a_stale_snapshot(name: str) -> None:
    state = build()
    snap = state.snapshot(10.0)
    record = snap.worker_record("w1")
    state.add_job(make_job("late", "m"))
    assert snap.stale
    with pytest.raises(SnapshotStale):
        call(snap, name, record)


def call(snap: SchedulingSnapshot, name: str, record: object) -> Any:
    if isinstance(inspect.getattr_static(snap, name), property):
        return getattr(snap, name)
    method: Callable[..., Any] = getattr(snap, name)
    if name in ("worker_vram", "worker_share", "worker_gpu_free"):
        return method(record)
    return method(*ARGS.get(name, ()))
