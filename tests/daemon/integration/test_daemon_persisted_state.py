"""What survives a restart (or a takeover): the policy applied through ``PUT /v2/scheduler``
comes back active with its version, author and time; the pools' last inventory shows in
``GET /v2/pools`` as offline, and gets no work until the pool heartbeats again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from orchestratord import SqliteStore, create_app
from orchestratord.store import PolicyRecord
from orchestratord.testing import (
    RecordingPoolAgentClient,
    ScriptedWorkerClient,
    make_config,
    pool_registration,
    running_app,
    wait_for,
)

pytestmark = pytest.mark.asyncio

SCRIPT = "fn schedule(ctx) { platform_schedule(ctx) }"


@asynccontextmanager
async def daemon(
    path: Path, worker: ScriptedWorkerClient | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A daemon on the SQLite file ``path`` that has taken the lead (restores done). Its
    pools go offline 3 s after their last heartbeat (swept every 0.5 s)."""
    app = create_app(
        make_config(heartbeat={"interval_s": 1.0, "missed_threshold": 3}),
        store=SqliteStore(path),
        worker_client=worker or ScriptedWorkerClient(),
        pool_client=RecordingPoolAgentClient(),
    )
    orch = app.state.orchestrator
    async with running_app(app) as client:
        # What the leader runs when it takes the lead (idempotent: harmless if it already did).
        await orch.scheduling.restore()
        await orch.fleet.restore()
        yield client, orch


async def test_the_applied_policy_is_active_again_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    async with daemon(path) as (client, _):
        first = (await client.get("/v2/scheduler")).json()
        assert first["version"] == 0 and first["applied_by"] is None
        r = await client.put("/v2/scheduler", json={"policy": "rhai", "script": SCRIPT})
        assert r.status_code == 200, r.text
        applied = r.json()
        assert applied["version"] == 1 and applied["applied_by"] == "anonymous"
        r = await client.put(
            "/v2/scheduler", json={"policy": "fifo", "placement": "most-vram-free"}
        )
        assert r.status_code == 200 and r.json()["version"] == 2
        r = await client.put("/v2/scheduler", json={"policy": "rhai", "script": SCRIPT})
        applied = r.json()
        assert applied["version"] == 3
    async with daemon(path) as (client, orch):
        view = (await client.get("/v2/scheduler")).json()
        for key in ("policy", "placement", "script", "version", "applied_by", "since"):
            assert view[key] == applied[key], key
        assert orch.scheduling.scheduler.name == "rhai"
        # Versions go on from the stored one.
        r = await client.put("/v2/scheduler", json={"policy": "priority"})
        assert r.json()["version"] == 4


async def test_a_stored_policy_that_no_longer_applies_falls_back_to_the_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "d.sqlite3"
    store = SqliteStore(path)
    await store.open()
    broken = PolicyRecord(7, "rhai", "least-loaded", script="fn schedule(ctx) { let x = ; }")
    await store.save_policy(broken)
    await store.close()
    with caplog.at_level(logging.ERROR, logger="orchestratord"):
        async with daemon(path) as (client, _):
            view = (await client.get("/v2/scheduler")).json()
            assert view["policy"] == "priority" and view["script"] is None
            assert view["version"] == 7  # the next PUT goes on from the stored history
            r = await client.put("/v2/scheduler", json={"policy": "fifo"})
            assert r.status_code == 200 and r.json()["version"] == 8
    assert any(getattr(r, "event", "") == "scheduler.restore_failed" for r in caplog.records)


async def test_pools_come_back_offline_and_get_work_only_after_a_heartbeat(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.sqlite3"
    async with daemon(path) as (client, orch):
        r = await client.post("/v2/pools/register", json=pool_registration("pool-a"))
        assert r.status_code == 200, r.text
        r = await client.post("/v2/pools/register", json=pool_registration("pool-b"))
        assert r.status_code == 200, r.text
        assert (await client.delete("/v2/pools/pool-b")).status_code == 200
        await wait_for(lambda: not orch.fleet._dirty and not orch.fleet._removed)
        await orch.fleet.flush()
        assert [p.pool_id for p in await orch.store.load_pools()] == ["pool-a"]
    worker = ScriptedWorkerClient()
    async with daemon(path, worker) as (client, orch):
        pools = (await client.get("/v2/pools")).json()["pools"]
        assert [(p["pool_id"], p["status"]) for p in pools] == [("pool-a", "offline")]
        assert pools[0]["workers"][0]["worker_id"] == "pool-a-w0"
        r = await client.post("/v2/tasks", json={"model": "m1", "prompt": "hi", "max_tokens": 4})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        # The stored heartbeat is recent (the pool would look online by its age): sweeps
        # and scheduling passes keep it offline all the same.
        await asyncio.sleep(1.2)
        assert (await client.get("/v2/pools/pool-a")).json()["status"] == "offline"
        assert (await client.get(f"/v2/tasks/{job_id}")).json()["status"] == "queued"
        assert worker.calls == []
        beat = {"sent_at": orch.clock(), "workers": pool_registration("pool-a")["workers"]}
        r = await client.post("/v2/pools/pool-a/heartbeat", json=beat)
        assert r.status_code == 200 and r.json()["status"] == "online", r.text
        await wait_for(lambda: job_id not in orch.active)
        assert (await client.get(f"/v2/tasks/{job_id}")).json()["status"] == "completed"
        assert [uri for uri, _ in worker.calls] == ["http://worker-pool-a-0"]
