"""How the daemon asks pools to start workers: by the pool's own name for a model (a pool may
know a catalog model by one of its aliases) and, after a refusal, not again at once (a pool
that can never start a model is not asked in a tight loop)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from orchestratord import MemoryStore, create_app
from orchestratord.pool_agents import PoolRequestFailed
from orchestratord.testing import (
    RecordingPoolAgentClient,
    ScriptedWorkerClient,
    make_config,
    pool_registration,
    running_app,
    wait_for,
)

pytestmark = pytest.mark.asyncio


class RefusingPoolAgentClient(RecordingPoolAgentClient):
    """Refuses every start as a pool without a launch configuration for the model does."""

    async def start_worker(
        self, endpoint: str, *, pool_id: str, model_ref: str, gpu_id: str, correlation_id: str
    ) -> str:
        self.starts.append((endpoint, pool_id, model_ref, gpu_id))
        raise PoolRequestFailed("MODEL_INCOMPATIBLE", f"no launch configuration for {model_ref}")


def empty_pool(model: str) -> dict[str, Any]:
    """A pool with one free GPU that can load ``model`` (by that name) and runs no worker."""
    body = pool_registration("pool-a", workers=0, model=model)
    body["gpus"][0]["vram_free_bytes"] = 24 << 30
    return body


async def test_a_pool_is_asked_for_a_model_by_the_alias_it_reported() -> None:
    pools = RecordingPoolAgentClient()
    worker = ScriptedWorkerClient()
    app = create_app(make_config(), store=MemoryStore(), worker_client=worker, pool_client=pools)
    async with running_app(app) as client:
        orch = app.state.orchestrator
        assert (await client.post("/v2/pools/register", json=empty_pool("model-one"))).is_success
        r = await client.post("/v2/tasks", json={"model": "m1", "prompt": "p", "max_tokens": 3})
        job_id = r.json()["job_id"]
        await wait_for(lambda: len(pools.starts) >= 1)
        assert pools.starts[0][2] == "model-one"  # the pool's name, not the catalog's "m1"
        # The pool reports the new worker under its own name; the job runs there.
        ready = pool_registration("pool-a", workers=1, model="model-one")["workers"]
        ready[0]["worker_id"] = "w-started-1"
        beat = {"sent_at": orch.clock(), "workers": ready, "models": ["model-one"]}
        assert (await client.post("/v2/pools/pool-a/heartbeat", json=beat)).is_success
        await wait_for(lambda: job_id not in orch.active)
        status = (await client.get(f"/v2/tasks/{job_id}")).json()
        assert status["status"] == "completed", status
        assert status["worker_id"] == "w-started-1"
        assert worker.calls[0][1].model == "model-one"  # the engine is told its own name


async def test_a_refused_start_is_not_retried_in_a_tight_loop() -> None:
    pools = RefusingPoolAgentClient()
    app = create_app(
        make_config(),
        store=MemoryStore(),
        worker_client=ScriptedWorkerClient(),
        pool_client=pools,
    )
    async with running_app(app) as client:
        assert (await client.post("/v2/pools/register", json=empty_pool("m1"))).is_success
        r = await client.post("/v2/tasks", json={"model": "m1", "prompt": "p", "max_tokens": 3})
        assert r.status_code == 202
        await wait_for(lambda: len(pools.starts) >= 1)
        await asyncio.sleep(1.5)
        # Backoff of 1 s then 2 s: at most the first attempt and one retry in 1.5 s (without
        # it the daemon asked ~20 times a second).
        assert 1 <= len(pools.starts) <= 2, pools.starts
        dropped = app.state.orchestrator.metrics.decisions_dropped.labels("start_worker")
        assert dropped._value.get() >= 1  # the policy's repeated proposals are counted


class VramRefusingPoolAgentClient(RecordingPoolAgentClient):
    """Refuses every start with INSUFFICIENT_VRAM and the figure the model needs."""

    async def start_worker(
        self, endpoint: str, *, pool_id: str, model_ref: str, gpu_id: str, correlation_id: str
    ) -> str:
        self.starts.append((endpoint, pool_id, model_ref, gpu_id))
        raise PoolRequestFailed(
            "INSUFFICIENT_VRAM", "does not fit", {"vram_needed_bytes": 40 << 30}
        )


async def test_a_refusal_with_the_vram_figure_teaches_the_daemon_that_the_model_never_fits() -> (
    None
):
    """A pool that does not report model sizes refuses the start with the figure; the daemon
    learns it and rejects the job NO_CAPACITY instead of asking again."""
    pools = VramRefusingPoolAgentClient()
    app = create_app(
        make_config(),
        store=MemoryStore(),
        worker_client=ScriptedWorkerClient(),
        pool_client=pools,
    )
    async with running_app(app) as client:
        orch = app.state.orchestrator
        assert (await client.post("/v2/pools/register", json=empty_pool("m1"))).is_success
        r = await client.post("/v2/tasks", json={"model": "m1", "prompt": "p", "max_tokens": 3})
        job_id = r.json()["job_id"]
        await wait_for(lambda: job_id not in orch.active)
        status = (await client.get(f"/v2/tasks/{job_id}")).json()
        assert status["status"] == "failed"
        assert status["error"]["code"] == "NO_CAPACITY"
        assert len(pools.starts) == 1
