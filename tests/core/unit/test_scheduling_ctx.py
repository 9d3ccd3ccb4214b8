"""snapshot.to_ctx(): the Rhai ctx map (docs/design/rhai-policies.md), windowed and cached
per pool."""

from __future__ import annotations

import pytest
from orchestrator_core.scheduling import PriorityOrder
from orchestrator_core.testing import cluster

JOB_FIELDS = {
    "id",
    "tenant_id",
    "session_id",
    "priority",
    "model_ref",
    "prompt_hash",
    "max_tokens",
    "seed",
    "temperature",
    "created_at",
    "queued_at",
    "wait_time_ms",
    "retry_count",
    "estimated_vram_bytes",
}
POOL_FIELDS = {
    "id",
    "endpoint",
    "status",
    "last_heartbeat_ms",
    "heartbeat_age_ms",
    "gpus",
    "workers",
    "cached_models",
}
GPU_FIELDS = {
    "id",
    "name",
    "vram_total_bytes",
    "vram_allocated_bytes",
    "vram_free_bytes",
    "utilization",
}
WORKER_FIELDS = {
    "id",
    "status",
    "model_ref",
    "gpu_ids",
    "vram_bytes",
    "uri",
    "current_job_id",
    "last_used_ms",
    "jobs_completed",
}


def build():  # type: ignore[no-untyped-def]
    return (
        cluster(order=PriorityOrder(promote_after_s=None))
        .model("m", vram_gb=8, aliases=["mm"])
        .tenant("acme", weight=2.0, max_running=3)
        .pool("p", models=["m"])
        .gpu("g0", vram_gb=24)
        .worker("w1", "m", last_used_at=12.5)
        .jobs(5, "m", prefix="i", tenant="acme")
        .jobs(4, "m", prefix="b", priority="batch")
        .build()
    )


def test_the_ctx_has_every_field_of_the_rhai_contract() -> None:
    ctx = build().snapshot(100.0).to_ctx()
    assert set(ctx) >= {"queue", "pools", "catalog", "tenants", "metrics", "config", "now"}
    assert ctx["now"] == 100_000
    assert set(ctx["queue"][0]) >= JOB_FIELDS
    pool = ctx["pools"][0]
    assert set(pool) >= POOL_FIELDS
    assert set(pool["gpus"][0]) >= GPU_FIELDS
    assert set(pool["workers"][0]) >= WORKER_FIELDS
    assert pool["workers"][0]["last_used_ms"] == 12_500
    assert pool["heartbeat_age_ms"] == 100_000
    assert ctx["catalog"]["models"]["m"]["vram_required_bytes"] == 8 * 10**9
    assert ctx["catalog"]["aliases"] == {"mm": "m"}
    assert ctx["tenants"]["acme"]["weight"] == 2.0
    assert ctx["tenants"]["acme"]["queued"] == 5
    assert ctx["metrics"]["queue_depth"] == {"interactive": 5, "batch": 4}
    assert ctx["metrics"]["workers_by_status"]["ready"] == 1
    assert ctx["config"]["scheduler"]["ordering"] == "priority"


def test_the_queue_is_ordered_interactive_first_then_fifo() -> None:
    ctx = build().snapshot(100.0).to_ctx()
    assert [j["id"] for j in ctx["queue"]] == [f"i{k}" for k in range(5)] + [
        f"b{k}" for k in range(4)
    ]
    assert [j["position"] for j in ctx["queue"]] == list(range(9))
    first = ctx["queue"][0]
    assert first["queued_at"] == 1000
    assert first["wait_time_ms"] == 99_000
    assert first["estimated_vram_bytes"] == 8 * 10**9


@pytest.mark.parametrize(("window", "shown"), [(0, 0), (2, 4), (4, 8), (10, 9)])
def test_the_queue_window_limits_each_class_and_says_so(window: int, shown: int) -> None:
    ctx = build().snapshot(100.0).to_ctx(window=window)
    info = ctx["queue_info"]
    assert len(ctx["queue"]) == shown == info["shown"]
    assert (info["total"], info["interactive"], info["batch"]) == (9, 5, 4)
    assert info["truncated"] is (shown < 9)
    assert info["window"] == window


def test_a_cached_pool_map_follows_changes_to_its_workers() -> None:
    state = build()
    before = state.snapshot(100.0).to_ctx()
    assert before["pools"][0]["workers"][0]["status"] == "ready"
    state.job_dispatched("i0", "w1", now=101.0)
    after = state.snapshot(102.0).to_ctx()
    worker = after["pools"][0]["workers"][0]
    assert (worker["status"], worker["current_job_id"]) == ("busy", "i0")
    again = state.snapshot(102.0).to_ctx()
    assert again["pools"][0]["workers"] is after["pools"][0]["workers"]  # cached


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        build().snapshot(1.0).to_ctx(window=-1)
