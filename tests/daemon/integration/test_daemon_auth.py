"""Authentication by mode, tenant isolation, quotas, pool identity, pools going offline and
the scheduler endpoints — the app in process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from orchestratord import MemoryStore, create_app
from orchestratord.testing import (
    RecordingPoolAgentClient,
    ScriptedWorkerClient,
    WorkerScript,
    make_config,
    pool_registration,
    running_app,
    wait_for,
)

pytestmark = pytest.mark.asyncio

OPERATOR = "operator-token-0123456789"
TENANT = "tenant-acme-token-0123456789"
POOL = "pool-token-0123456789abcdef"
POOL2 = "pool-token-two-0123456789ab"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def lab() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    config = make_config(
        mode="lab",
        auth={
            "clients": [{"token": OPERATOR}, {"token": TENANT, "tenant": "acme"}],
            "pool_tokens": [POOL, POOL2],
        },
        tenants=[{"tenant_id": "acme", "max_queued": 1}],
    )
    app = create_app(
        config,
        store=MemoryStore(),
        worker_client=ScriptedWorkerClient(),
        pool_client=RecordingPoolAgentClient(),
    )
    async with running_app(app) as client:
        yield client, app


SUBMIT = {"model": "m1", "prompt": "hi", "max_tokens": 4}


async def test_tokens_are_required_and_checked_by_kind(lab: Any) -> None:
    client, _ = lab
    r = await client.post("/v2/tasks", json=SUBMIT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/v2/tasks", json=SUBMIT, headers=bearer("x" * 30))
    assert r.status_code == 401
    r = await client.post("/v2/tasks", json=SUBMIT, headers=bearer(POOL))
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
    r = await client.post("/v2/pools/register", json=pool_registration(), headers=bearer(OPERATOR))
    assert r.status_code == 403
    r = await client.post("/v2/pools/register", json=pool_registration(), headers=bearer(POOL))
    assert r.status_code == 200
    assert (
        await client.post("/v2/tasks", json=SUBMIT, headers=bearer(OPERATOR))
    ).status_code == 202
    assert (await client.get("/health")).status_code == 200  # probes need no token


async def test_openapi_declares_bearer_auth_in_lab_mode(lab: Any) -> None:
    client, _ = lab
    doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["paths"]["/v2/tasks"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/health"]["get"]


async def test_tenants_see_only_their_own_jobs(lab: Any) -> None:
    client, _ = lab
    mine = (await client.post("/v2/tasks", json=SUBMIT, headers=bearer(TENANT))).json()["job_id"]
    other = (await client.post("/v2/tasks", json=SUBMIT, headers=bearer(OPERATOR))).json()["job_id"]
    assert (await client.get(f"/v2/tasks/{mine}", headers=bearer(TENANT))).status_code == 200
    r = await client.get(f"/v2/tasks/{other}", headers=bearer(TENANT))
    assert r.status_code == 404 and r.json()["error"]["code"] == "JOB_NOT_FOUND"
    assert (await client.delete(f"/v2/tasks/{other}", headers=bearer(TENANT))).status_code == 404
    r = await client.get(f"/v2/tasks/{other}/events", headers=bearer(TENANT))
    assert r.status_code == 404
    listed = (await client.get("/v2/tasks", headers=bearer(TENANT))).json()["items"]
    assert [j["job_id"] for j in listed] == [mine]
    everything = (await client.get("/v2/tasks", headers=bearer(OPERATOR))).json()["items"]
    assert {j["job_id"] for j in everything} == {mine, other}


async def test_tenant_quota_is_429_quota_exceeded(lab: Any) -> None:
    client, _ = lab
    assert (await client.post("/v2/tasks", json=SUBMIT, headers=bearer(TENANT))).status_code == 202
    r = await client.post("/v2/tasks", json=SUBMIT, headers=bearer(TENANT))
    assert r.status_code == 429 and r.json()["error"]["code"] == "QUOTA_EXCEEDED"
    assert r.headers["retry-after"] == "1"
    assert (
        await client.post("/v2/tasks", json=SUBMIT, headers=bearer(OPERATOR))
    ).status_code == 202


async def test_heartbeats_must_come_from_the_registering_token(lab: Any) -> None:
    client, app = lab
    await client.post("/v2/pools/register", json=pool_registration(), headers=bearer(POOL))
    beat = {"sent_at": app.state.orchestrator.clock()}
    r = await client.post("/v2/pools/pool-a/heartbeat", json=beat, headers=bearer(POOL2))
    assert r.status_code == 403
    r = await client.post("/v2/pools/pool-a/heartbeat", json=beat, headers=bearer(POOL))
    assert r.status_code == 200


async def test_tokens_are_never_logged_only_fingerprints(
    lab: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = lab
    caplog.set_level(logging.DEBUG, logger="orchestratord")
    await client.post("/v2/tasks", json=SUBMIT, headers=bearer("wrong-secret-token-xyz"))
    await client.post("/v2/pools/register", json=pool_registration(), headers=bearer(POOL))
    text = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "wrong-secret-token-xyz" not in text and POOL not in text
    assert "sha256:" in text


async def test_scheduler_view_and_swap_are_for_operators(lab: Any) -> None:
    client, _ = lab
    view = (await client.get("/v2/scheduler", headers=bearer(TENANT))).json()
    assert view["policy"] == "priority"
    r = await client.put("/v2/scheduler", json={"policy": "fifo"}, headers=bearer(TENANT))
    assert r.status_code == 403
    r = await client.put("/v2/scheduler", json={"policy": "fifo"}, headers=bearer(OPERATOR))
    assert r.status_code == 200 and r.json()["policy"] == "fifo"
    r = await client.put("/v2/scheduler", json={"policy": "bogus"}, headers=bearer(OPERATOR))
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PARAMETER"
    assert "policy" in r.json()["error"]["message"]
    assert (await client.get("/v2/scheduler", headers=bearer(OPERATOR))).json()["policy"] == "fifo"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (WorkerScript(hang=True, token_delay_s=0.02), "failed"),  # tokens relayed: WORKER_FAILED
        (WorkerScript(hang=True, tokens=[], token_delay_s=5.0), "queued"),  # none: re-queued
    ],
)
async def test_jobs_of_a_pool_that_went_offline(script: WorkerScript, expected: str) -> None:
    worker = ScriptedWorkerClient(script)
    config = make_config(heartbeat={"interval_s": 0.1, "missed_threshold": 2})
    app = create_app(
        config, store=MemoryStore(), worker_client=worker, pool_client=RecordingPoolAgentClient()
    )
    async with running_app(app) as client:
        orch = app.state.orchestrator
        await client.post("/v2/pools/register", json=pool_registration())
        job_id = (await client.post("/v2/tasks", json=SUBMIT)).json()["job_id"]
        await wait_for(lambda: str(orch.active[job_id].job.status) == "running")
        if expected == "failed":
            await wait_for(lambda: orch.active[job_id].row.tokens > 0)
        # no heartbeats: offline after 0.2 s, swept within 0.05 s
        await wait_for(
            lambda: job_id not in orch.active or (str(orch.active[job_id].job.status) == "queued"),
            timeout_s=5,
        )
        status = (await client.get(f"/v2/tasks/{job_id}")).json()
        assert status["status"] == expected
        if expected == "failed":
            assert status["error"]["code"] == "WORKER_FAILED"
        pools = (await client.get("/v2/pools")).json()["pools"]
        assert pools[0]["status"] == "offline"


async def test_the_daemon_sends_each_pool_the_token_it_registered_with() -> None:
    config = make_config(
        mode="lab", auth={"clients": [{"token": OPERATOR}], "pool_tokens": [POOL, POOL2]}
    )
    app = create_app(config, store=MemoryStore(), worker_client=ScriptedWorkerClient())
    async with running_app(app) as client:
        for pool_id, token in (("pool-a", POOL), ("pool-b", POOL2)):
            body = {**pool_registration(pool_id), "endpoint": f"http://{pool_id}:9000"}
            r = await client.post("/v2/pools/register", json=body, headers=bearer(token))
            assert r.status_code == 200, r.text
        pool_client = app.state.orchestrator.ctx.pool_client
        assert pool_client.token_for("http://pool-a:9000") == POOL
        assert pool_client.token_for("http://pool-b:9000") == POOL2
        assert pool_client.token_for("http://unknown:9000") is None  # never another's
