"""Pools over real HTTP on loopback: the simulated pool (in-process and as the
``llorch-sim pool`` program) and the real pool agent (``llorch-pool`` with real engine
subprocesses), against a fake orchestrator.

``FakeOrchestrator`` is a test double of *orchestratord's* pool-facing API only, used here
because the real daemon is being written at the same time; it validates every body with the
core's strict types (PoolRegistration, PoolHeartbeat) and keeps pools in the core's
InMemoryPoolRegistry, so a payload the daemon would refuse fails these tests too.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llorch_pool.agent import PoolAgent, PoolAgentConfig
from llorch_pool.protocol import WorkerProtocol
from llorch_pool.serving import RunningServer, free_port, serve_app
from llorch_pool.sim import EngineFaults, SimEngineConfig, SimModel, SimulatedPool
from orchestrator_core.errors import OrchestratorError
from orchestrator_core.pools import (
    InMemoryPoolRegistry,
    PoolHeartbeat,
    PoolRegistration,
    PoolStatus,
)
from orchestrator_core.sse import aiter_sse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

pytestmark = pytest.mark.timeout(90)

GB = 1_000_000_000


class FakeOrchestrator:
    """Records pool calls; validates them with core types; can be told to answer badly."""

    def __init__(self, *, token: str | None = None, interval_s: float = 0.2) -> None:
        self.token = token
        self.registry = InMemoryPoolRegistry(heartbeat_interval_s=interval_s, missed_threshold=3)
        self.calls: list[tuple[str, str]] = []
        self.registrations: list[PoolRegistration] = []
        self.heartbeats: list[PoolHeartbeat] = []
        self.deletes: list[str] = []
        self.fail_heartbeats_with: int | None = None
        self.app = Starlette(
            routes=[
                Route("/v2/pools/register", self._register, methods=["POST"]),
                Route("/v2/pools/{pool_id}/heartbeat", self._heartbeat, methods=["POST"]),
                Route("/v2/pools/{pool_id}", self._delete, methods=["DELETE"]),
            ]
        )

    def _auth(self, request: Request) -> Response | None:
        if self.token is None:
            return None
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given, self.token):
            return JSONResponse({"error": {"code": "UNAUTHORIZED", "message": "no"}}, 401)
        return None

    async def _register(self, request: Request) -> Response:
        self.calls.append(("register", ""))
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            reg = PoolRegistration.parse(await request.body())
            info = self.registry.register(reg)
        except OrchestratorError as exc:
            return JSONResponse(exc.to_envelope(), exc.http_status)
        self.registrations.append(reg)
        return JSONResponse(info.model_dump(mode="json"))

    async def _heartbeat(self, request: Request) -> Response:
        pool_id = request.path_params["pool_id"]
        self.calls.append(("heartbeat", pool_id))
        if (denied := self._auth(request)) is not None:
            return denied
        if self.fail_heartbeats_with is not None:
            return JSONResponse({"error": {"code": "INTERNAL", "message": "x"}}, 500)
        try:
            beat = PoolHeartbeat.parse(await request.body())
            self.registry.heartbeat(pool_id, beat)
        except OrchestratorError as exc:
            return JSONResponse(exc.to_envelope(), exc.http_status)
        self.heartbeats.append(beat)
        return JSONResponse({"ok": True})

    async def _delete(self, request: Request) -> Response:
        pool_id = request.path_params["pool_id"]
        self.deletes.append(pool_id)
        try:
            self.registry.unregister(pool_id)
        except OrchestratorError as exc:
            return JSONResponse(exc.to_envelope(), exc.http_status)
        return Response(status_code=204)

    def forget(self, pool_id: str) -> None:
        """Lose a pool, as a restarted orchestrator without persistence would."""
        self.registry.unregister(pool_id)

    def last_workers(self) -> dict[str, Any]:
        return {w.worker_id: w for w in self.heartbeats[-1].workers} if self.heartbeats else {}


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll ``check`` until true or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def orchestrator() -> AsyncIterator[tuple[FakeOrchestrator, RunningServer]]:
    fake = FakeOrchestrator(token="s3cret")
    server = await serve_app(fake.app)
    yield fake, server
    await server.stop(force=True)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        yield client


@pytest.fixture
async def make_pool(
    orchestrator: tuple[FakeOrchestrator, RunningServer],
) -> AsyncIterator[Callable[..., Awaitable[SimulatedPool]]]:
    pools: list[SimulatedPool] = []
    _, server = orchestrator

    async def make(**kwargs: Any) -> SimulatedPool:
        options: dict[str, Any] = {
            "pool_id": "sim-1",
            "orchestrator_url": server.url,
            "models": [SimModel("m1", 6 * GB), SimModel("m2", 12 * GB)],
            "gpus": 2,
            "vram_bytes_per_gpu": 16 * GB,
            "engine": SimEngineConfig(ttft_s=0.0, tokens_per_s=0.0, load_time_s=0.2),
            "token": "s3cret",
            "heartbeat_interval_s": 0.2,
            "health_interval_s": 0.1,
            "max_backoff_s": 0.3,
            "stop_grace_s": 1.0,
        }
        pool = SimulatedPool(**(options | kwargs))
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.stop()


async def start_worker(
    http: httpx.AsyncClient, pool: SimulatedPool | str, model: str, gpu: str
) -> httpx.Response:
    url = pool if isinstance(pool, str) else pool.url
    return await http.post(f"{url}/v2/workers/start", json={"model_ref": model, "gpu_id": gpu})


async def inventory(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await http.get(f"{url}/v2/inventory")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


async def drain(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[Any]:
    """POST ``body`` and read the whole SSE stream."""
    async with http.stream("POST", url, json=body) as resp:
        return [e async for e in aiter_sse(resp.aiter_text())]


def worker_status(inv: dict[str, Any], worker_id: str) -> str | None:
    for w in inv["workers"]:
        if w["worker_id"] == worker_id:
            status: str = w["status"]
            return status
    return None


# -- simulated pool, in-process ------------------------------------------------------------


async def test_the_pool_registers_and_heartbeats_with_its_token(
    orchestrator: tuple[FakeOrchestrator, RunningServer], make_pool: Any
) -> None:
    fake, _ = orchestrator
    pool = await make_pool()
    await eventually(lambda: len(fake.heartbeats) >= 3)
    reg = fake.registrations[0]
    assert reg.pool_id == "sim-1"
    assert reg.endpoint == pool.url
    assert sorted(reg.models) == ["m1", "m2"]
    assert [(g.gpu_id, g.vram_total_bytes, g.vram_free_bytes) for g in reg.gpus] == [
        ("0", 16 * GB, 16 * GB),
        ("1", 16 * GB, 16 * GB),
    ]
    assert fake.registry.get("sim-1").status is PoolStatus.ONLINE
    stamps = [b.sent_at for b in fake.heartbeats]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time()) < 5


async def test_a_heartbeat_404_makes_the_pool_register_again(
    orchestrator: tuple[FakeOrchestrator, RunningServer], make_pool: Any
) -> None:
    fake, _ = orchestrator
    pool = await make_pool()
    await eventually(lambda: len(fake.heartbeats) >= 1)
    fake.forget("sim-1")
    await eventually(lambda: len(fake.registrations) >= 2)
    assert pool.link is not None
    assert pool.link.stats.reregistrations_after_404 >= 1
    assert fake.registry.get("sim-1").status is PoolStatus.ONLINE


async def test_the_pool_survives_orchestrator_downtime_and_backs_off(http: Any) -> None:
    port = free_port()
    pool = SimulatedPool(
        pool_id="late",
        orchestrator_url=f"http://127.0.0.1:{port}",
        models=[SimModel("m1", GB)],
        heartbeat_interval_s=0.1,
        max_backoff_s=0.4,
    )
    await pool.start()
    try:
        assert pool.link is not None
        await eventually(lambda: pool.link is not None and pool.link.stats.failures >= 3)
        failures_before = pool.link.stats.failures
        await asyncio.sleep(1.0)
        # Back-off: at most ~1 s / 0.32 s (the shortest capped delay) tries, not one per 0.1 s.
        assert pool.link.stats.failures - failures_before <= 5
        assert (await http.get(f"{pool.url}/health")).json()["registered"] is False
        fake = FakeOrchestrator()
        server = await serve_app(fake.app, port=port)
        try:
            await eventually(lambda: len(fake.heartbeats) >= 1)
            assert fake.registry.get("late").status is PoolStatus.ONLINE
            fake.fail_heartbeats_with = 500
            n = pool.link.stats.failures
            await eventually(lambda: pool.link is not None and pool.link.stats.failures > n)
            fake.fail_heartbeats_with = None
            beats = len(fake.heartbeats)
            await eventually(lambda: len(fake.heartbeats) > beats)
        finally:
            await server.stop(force=True)
    finally:
        await pool.stop()


async def test_a_wrong_token_is_refused_and_retried_without_crashing(
    orchestrator: tuple[FakeOrchestrator, RunningServer], make_pool: Any
) -> None:
    fake, _ = orchestrator
    pool = await make_pool(token="wrong")
    await eventually(lambda: pool.link.stats.failures >= 2)
    assert fake.registrations == []
    assert "UNAUTHORIZED" in (pool.link.stats.last_error or "")


async def test_start_worker_goes_starting_then_ready_and_serves_jobs(
    orchestrator: tuple[FakeOrchestrator, RunningServer], make_pool: Any, http: Any
) -> None:
    fake, _ = orchestrator
    pool = await make_pool()
    r = await start_worker(http, pool, "m1", "0")
    assert r.status_code == 202
    wid = r.json()["worker_id"]
    inv = await inventory(http, pool.url)
    assert worker_status(inv, wid) == "starting"
    assert inv["protocols"] == {wid: "llorch"}
    gpu0 = next(g for g in inv["gpus"] if g["gpu_id"] == "0")
    assert gpu0["vram_free_bytes"] == 10 * GB  # reserved at once
    # The orchestrator hears about it in a heartbeat: first starting, then ready.
    await eventually(lambda: wid in fake.last_workers())
    seen = {b.workers[0].status for b in fake.heartbeats if b.workers}
    await eventually(lambda: fake.last_workers()[wid].status == "ready")
    seen |= {b.workers[0].status for b in fake.heartbeats if b.workers}
    assert {"starting", "ready"} <= seen
    worker = fake.last_workers()[wid]
    assert worker.model_ref == "m1"
    assert worker.gpu_ids == ["0"]
    assert worker.vram_bytes == 6 * GB
    # Its uri is a worker that speaks the native protocol.
    body = {"job_id": "j1", "prompt": "hi", "max_tokens": 4, "seed": 1}
    async with http.stream("POST", f"{worker.uri}/execute", json=body) as resp:
        events = [e async for e in aiter_sse(resp.aiter_text())]
    assert [e.event for e in events][-1] == "end"


async def test_start_worker_refusals(make_pool: Any, http: Any) -> None:
    pool = await make_pool(vram_bytes_per_gpu=10 * GB)
    assert (await start_worker(http, pool, "m1", "0")).status_code == 202
    r = await start_worker(http, pool, "m1", "0")  # 6 GB more on a GPU with 4 GB free
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "INSUFFICIENT_VRAM"
    assert err["details"]["vram_free_bytes"] == 4 * GB
    r = await start_worker(http, pool, "m2", "1")  # 12 GB can never fit a 10 GB GPU
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "MODEL_INCOMPATIBLE"
    r = await start_worker(http, pool, "nope", "1")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "MODEL_INCOMPATIBLE"
    r = await start_worker(http, pool, "m1", "7")
    assert r.status_code == 400
    assert "gpu_id" in r.json()["error"]["message"]
    r = await http.post(f"{pool.url}/v2/workers/start", json={"model_ref": "m1"})
    assert r.status_code == 400
    assert "gpu_id" in r.json()["error"]["message"]
    r = await http.post(
        f"{pool.url}/v2/workers/start", json={"model_ref": "m1", "gpu_id": "1", "pool_id": "x"}
    )
    assert r.status_code == 400
    # The refused starts reserved nothing.
    inv = await inventory(http, pool.url)
    assert [g["vram_free_bytes"] for g in inv["gpus"]] == [4 * GB, 10 * GB]
    assert len(inv["workers"]) == 1


async def test_stop_worker_frees_vram_closes_the_engine_and_is_idempotent(
    orchestrator: tuple[FakeOrchestrator, RunningServer], make_pool: Any, http: Any
) -> None:
    fake, _ = orchestrator
    pool = await make_pool()
    wid = (await start_worker(http, pool, "m2", "1")).json()["worker_id"]
    await eventually(
        lambda: worker_status_sync(pool, wid) == "ready",
    )
    uri = pool.workers.get(wid).uri
    r = await http.post(f"{pool.url}/v2/workers/stop", json={"worker_id": wid})
    assert r.status_code == 202
    inv = await inventory(http, pool.url)
    assert worker_status(inv, wid) is None
    assert [g["vram_free_bytes"] for g in inv["gpus"]] == [16 * GB, 16 * GB]
    with pytest.raises(httpx.ConnectError):
        await http.get(f"{uri}/health")
    again = await http.post(f"{pool.url}/v2/workers/stop", json={"worker_id": wid})
    assert again.status_code == 202
    unknown = await http.post(f"{pool.url}/v2/workers/stop", json={"worker_id": "ghost"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "WORKER_NOT_FOUND"
    await eventually(lambda: wid not in fake.last_workers())


def worker_status_sync(pool: SimulatedPool, worker_id: str) -> str | None:
    try:
        return str(pool.workers.get(worker_id).status)
    except OrchestratorError:
        return None


async def test_a_crashed_engine_is_reported_failed_and_its_vram_freed(
    orchestrator: tuple[FakeOrchestrator, RunningServer], make_pool: Any, http: Any
) -> None:
    fake, _ = orchestrator
    pool = await make_pool(
        engine=SimEngineConfig(ttft_s=0.0, tokens_per_s=0.0),
    )
    pool.set_faults(engine_faults=EngineFaults(crash_after_tokens=2, crash_scope="engine"))
    wid = (await start_worker(http, pool, "m1", "0")).json()["worker_id"]
    await eventually(lambda: worker_status_sync(pool, wid) == "ready")
    uri = pool.workers.get(wid).uri
    body = {"job_id": "boom", "prompt": "x", "max_tokens": 10}
    with pytest.raises(httpx.HTTPError):
        await drain(http, f"{uri}/execute", body)
    await eventually(
        lambda: wid in fake.last_workers() and fake.last_workers()[wid].status == "failed"
    )
    inv = await inventory(http, pool.url)
    assert inv["gpus"][0]["vram_free_bytes"] == 16 * GB
    # A failed worker can be stopped (forgotten) by the orchestrator.
    assert (
        await http.post(f"{pool.url}/v2/workers/stop", json={"worker_id": wid})
    ).status_code == 202

    # The same through the simulator's control API: the engine process "dies".
    pool.set_faults(engine_faults=EngineFaults(crash_after_tokens=None))
    wid2 = (await start_worker(http, pool, "m1", "1")).json()["worker_id"]
    await eventually(lambda: worker_status_sync(pool, wid2) == "ready")
    assert (await http.post(f"{pool.url}/sim/workers/{wid2}/crash")).status_code == 202
    await eventually(lambda: worker_status_sync(pool, wid2) == "failed")
    assert "died" in (pool.workers.get(wid2).failure or "")


async def test_a_paused_heartbeat_makes_the_pool_go_offline_and_come_back(
    orchestrator: tuple[FakeOrchestrator, RunningServer], make_pool: Any, http: Any
) -> None:
    fake, _ = orchestrator
    pool = await make_pool()
    await eventually(lambda: len(fake.heartbeats) >= 1)
    r = await http.post(f"{pool.url}/sim/faults", json={"heartbeat_paused": True})
    assert r.json()["heartbeat_paused"] is True
    # interval 0.2 s x 3 missed = offline after 0.6 s of silence.
    await eventually(lambda: fake.registry.get("sim-1").status is PoolStatus.OFFLINE, 5)
    # It still serves its API while silent.
    assert (await http.get(f"{pool.url}/v2/inventory")).status_code == 200
    await http.post(f"{pool.url}/sim/faults", json={"heartbeat_paused": False})
    await eventually(lambda: fake.registry.get("sim-1").status is PoolStatus.ONLINE, 5)


async def test_a_slow_heartbeat_degrades_the_pool(
    orchestrator: tuple[FakeOrchestrator, RunningServer], make_pool: Any
) -> None:
    fake, _ = orchestrator
    pool = await make_pool()
    await eventually(lambda: len(fake.heartbeats) >= 1)
    pool.set_faults(heartbeat_delay_s=0.25)  # period 0.45 s > 1.5 x 0.2 s: degraded, not offline
    statuses: set[PoolStatus] = set()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        statuses.add(fake.registry.get("sim-1").status)
        await asyncio.sleep(0.02)
    assert PoolStatus.DEGRADED in statuses
    assert PoolStatus.OFFLINE not in statuses


async def test_the_pool_api_can_require_a_token(make_pool: Any, http: Any) -> None:
    pool = await make_pool(api_token="pool-key")
    r = await http.get(f"{pool.url}/v2/inventory")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "UNAUTHORIZED"
    r = await http.get(f"{pool.url}/v2/inventory", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403
    r = await http.get(f"{pool.url}/v2/inventory", headers={"Authorization": "Bearer pool-key"})
    assert r.status_code == 200


async def test_native_workers_report_busy_from_their_engine_health(
    make_pool: Any, http: Any
) -> None:
    pool = await make_pool(engine=SimEngineConfig(ttft_s=0.0, tokens_per_s=40.0))
    wid = (await start_worker(http, pool, "m1", "0")).json()["worker_id"]
    await eventually(lambda: worker_status_sync(pool, wid) == "ready")
    uri = pool.workers.get(wid).uri
    body = {"job_id": "slow", "prompt": "x", "max_tokens": 40}
    async with http.stream("POST", f"{uri}/execute", json=body) as resp:
        await eventually(lambda: worker_status_sync(pool, wid) == "busy", 5)
        info = pool.workers.get(wid).info()
        assert (info.active_jobs, info.current_job_id) == (1, "slow")
        [e async for e in aiter_sse(resp.aiter_text())]
    await eventually(lambda: worker_status_sync(pool, wid) == "ready", 5)
    assert pool.workers.get(wid).info().jobs_completed == 1


async def test_a_pool_of_openai_workers_reports_the_protocol(make_pool: Any, http: Any) -> None:
    pool = await make_pool(protocol=WorkerProtocol.OPENAI)
    wid = (await start_worker(http, pool, "m1", "0")).json()["worker_id"]
    await eventually(lambda: worker_status_sync(pool, wid) == "ready")
    assert (await inventory(http, pool.url))["protocols"] == {wid: "openai"}
    uri = pool.workers.get(wid).uri
    body = {"prompt": "x", "max_tokens": 3, "stream": True}
    async with http.stream("POST", f"{uri}/v1/completions", json=body) as resp:
        datas = [e.data async for e in aiter_sse(resp.aiter_text())]
    assert datas[-1] == "[DONE]"


async def test_the_pool_stats_see_one_job_on_two_engines_at_once(make_pool: Any, http: Any) -> None:
    pool = await make_pool(engine=SimEngineConfig(ttft_s=0.0, tokens_per_s=50.0))
    workers = [(await start_worker(http, pool, "m1", g)).json()["worker_id"] for g in "01"]
    for wid in workers:
        await eventually(lambda wid=wid: worker_status_sync(pool, wid) == "ready")
    uris = [pool.workers.get(wid).uri for wid in workers]
    body = {"job_id": "twice", "prompt": "x", "max_tokens": 5}
    ends = await asyncio.gather(*(drain(http, f"{uri}/execute", body) for uri in uris))
    assert all(events[-1].event == "end" for events in ends)
    stats = (await http.get(f"{pool.url}/sim/stats", params={"job_id": "twice"})).json()
    assert stats["pool_id"] == "sim-1"
    job = stats["jobs"]["twice"]
    assert (job["executions"], job["max_concurrent"], job["active"]) == (2, 2, 0)
    assert sorted(run["worker_id"] for run in job["runs"]) == sorted(workers)
    assert stats["counters"]["max_concurrent_same_job"] == 2
    # Each engine saw it once.
    own = (await http.get(f"{uris[0]}/sim/stats")).json()
    assert own["jobs"]["twice"]["max_concurrent"] == 1
    assert own["worker_id"] == workers[0]


# -- the llorch-sim pool program ----------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        if p.stdout is not None:
            p.stdout.close()  # the URL pipe: left open, it is a ResourceWarning at collection


def spawn(procs: list[subprocess.Popen[str]], *argv: str) -> tuple[subprocess.Popen[str], str]:
    """Start a program whose first stdout line is its URL; return it and the URL."""
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    procs.append(proc)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://"), f"no URL line (exit {proc.poll()})"
    return proc, url


async def test_the_sim_pool_program_registers_and_starts_workers(
    orchestrator: tuple[FakeOrchestrator, RunningServer], processes: Any, http: Any
) -> None:
    fake, server = orchestrator
    proc, url = spawn(
        processes,
        sys.executable, "-m", "llorch_pool.sim", "pool",
        "--orchestrator", server.url, "--pool-id", "proc-1", "--gpus", "2",
        "--vram-gb", "24", "--models", "m1:6,m2:12:load_s=0.2", "--port", "0",
        "--heartbeat-interval", "0.2", "--token", "s3cret",
    )  # fmt: skip
    await eventually(lambda: len(fake.heartbeats) >= 1)
    assert fake.registrations[0].endpoint == url
    wid = (await start_worker(http, url, "m2", "1")).json()["worker_id"]
    await eventually(
        lambda: wid in fake.last_workers() and fake.last_workers()[wid].status == "ready"
    )
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0
    assert fake.deletes == ["proc-1"]  # a clean stop unregisters


# -- the real pool agent with engine subprocesses ---------------------------------------------


def agent_config(tmp_path: Path, orchestrator_url: str, extra: str = "") -> Path:
    py = sys.executable
    text = textwrap.dedent(
        f"""
        pool_id = "real-1"
        orchestrator_url = "{orchestrator_url}"
        token = "s3cret"
        listen_port = 0
        heartbeat_interval_s = 0.2
        health_interval_s = 0.1
        ready_timeout_s = 20
        stop_grace_s = 2
        max_backoff_s = 0.3
        gpu_detection = "config"
        log_dir = "{tmp_path / "logs"}"

        [[gpus]]
        gpu_id = "0"
        name = "cpu"
        vram_gb = 8

        [models.sim-small]
        command = ["{py}", "-m", "llorch_pool.sim", "engine", "--host", "{{host}}",
                   "--port", "{{port}}", "--model", "{{model_ref}}", "--worker-id", "{{worker_id}}",
                   "--load-time-s", "0.3", "--tokens-per-s", "0", "--ttft-ms", "0"]
        vram_gb = 2
        protocol = "llorch"

        [models.crashy]
        command = ["{py}", "-m", "llorch_pool.sim", "engine", "--port", "{{port}}",
                   "--crash-after-tokens", "1", "--crash-scope", "engine"]
        vram_gb = 2
        protocol = "llorch"

        [models.never-ready]
        command = ["{py}", "-c", "import time; time.sleep(60)"]
        vram_gb = 1
        ready_timeout_s = 0.5

        [models.exits]
        command = ["{py}", "-c", "import sys; print('bad model file'); sys.exit(3)"]
        vram_gb = 1
        """
    )
    path = tmp_path / "pool.toml"
    path.write_text(text + extra)
    PoolAgentConfig.load(path)  # the file is valid
    return path


async def test_the_agent_spawns_real_engine_processes_and_stops_them(
    orchestrator: tuple[FakeOrchestrator, RunningServer],
    processes: Any,
    http: Any,
    tmp_path: Path,
) -> None:
    fake, server = orchestrator
    config = agent_config(tmp_path, server.url)
    proc, url = spawn(processes, sys.executable, "-m", "llorch_pool.agent", "--config", str(config))
    await eventually(lambda: len(fake.heartbeats) >= 1)
    reg = fake.registrations[0]
    assert sorted(reg.models) == ["crashy", "exits", "never-ready", "sim-small"]
    assert reg.gpus[0].vram_total_bytes == 8 * GB

    wid = (await start_worker(http, url, "sim-small", "0")).json()["worker_id"]
    assert worker_status(await inventory(http, url), wid) == "starting"
    await eventually(
        lambda: wid in fake.last_workers() and fake.last_workers()[wid].status == "ready"
    )
    uri = fake.last_workers()[wid].uri
    health = (await http.get(f"{uri}/health")).json()
    assert health["worker_id"] == wid  # a real child process, started with the placeholders
    assert health["model"] == "sim-small"
    assert (await inventory(http, url))["protocols"][wid] == "llorch"

    assert (await http.post(f"{url}/v2/workers/stop", json={"worker_id": wid})).status_code == 202
    with pytest.raises(httpx.ConnectError):
        await http.get(f"{uri}/health")

    # Insufficient VRAM: 8 GB GPU, 2 GB models.
    ids = [(await start_worker(http, url, "sim-small", "0")).json()["worker_id"] for _ in range(4)]
    refused = await start_worker(http, url, "sim-small", "0")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "INSUFFICIENT_VRAM"
    for wid in ids:
        assert (
            await http.post(f"{url}/v2/workers/stop", json={"worker_id": wid})
        ).status_code == 202

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0
    assert fake.deletes == ["real-1"]


async def test_the_agent_reports_engines_that_die_or_never_get_ready_as_failed(
    orchestrator: tuple[FakeOrchestrator, RunningServer],
    processes: Any,
    http: Any,
    tmp_path: Path,
) -> None:
    fake, server = orchestrator
    config = agent_config(tmp_path, server.url)
    proc, url = spawn(processes, sys.executable, "-m", "llorch_pool.agent", "--config", str(config))

    crashy = (await start_worker(http, url, "crashy", "0")).json()["worker_id"]
    never = (await start_worker(http, url, "never-ready", "0")).json()["worker_id"]
    exits = (await start_worker(http, url, "exits", "0")).json()["worker_id"]

    async def status(wid: str) -> str | None:
        return worker_status(await inventory(http, url), wid)

    await eventually(lambda: _eq(status(crashy), "ready"))
    uri = next(
        w["uri"] for w in (await inventory(http, url))["workers"] if w["worker_id"] == crashy
    )
    body = {"job_id": "j", "prompt": "x", "max_tokens": 5}
    with pytest.raises(httpx.HTTPError):
        await drain(http, f"{uri}/execute", body)
    await eventually(lambda: _eq(status(crashy), "failed"))
    await eventually(lambda: _eq(status(never), "failed"))
    await eventually(lambda: _eq(status(exits), "failed"))
    await eventually(
        lambda: all(fake.last_workers()[w].status == "failed" for w in (crashy, never, exits))
    )
    inv = await inventory(http, url)
    assert inv["gpus"][0]["vram_free_bytes"] == 8 * GB  # dead engines hold no VRAM
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0
    log = (tmp_path / "logs" / f"{exits}.log").read_text()
    assert "bad model file" in log


async def _eq(value: Awaitable[str | None], expected: str) -> bool:
    return (await value) == expected


async def test_the_agent_fronts_a_static_engine_that_already_runs(
    orchestrator: tuple[FakeOrchestrator, RunningServer],
    processes: Any,
    http: Any,
    tmp_path: Path,
) -> None:
    fake, server = orchestrator
    engine, engine_url = spawn(
        processes,
        sys.executable,
        "-m",
        "llorch_pool.sim",
        "engine",
        "--port",
        "0",
        "--model",
        "ext",
    )
    extra = textwrap.dedent(
        f"""
        [[static_workers]]
        worker_id = "ext-1"
        model_ref = "ext"
        uri = "{engine_url}"
        protocol = "openai"
        gpu_id = "0"
        vram_gb = 3
        """
    )
    config = agent_config(tmp_path, server.url, extra)
    proc, url = spawn(processes, sys.executable, "-m", "llorch_pool.agent", "--config", str(config))
    await eventually(
        lambda: "ext-1" in fake.last_workers() and fake.last_workers()["ext-1"].status == "ready"
    )
    inv = await inventory(http, url)
    assert inv["protocols"]["ext-1"] == "openai"
    assert inv["gpus"][0]["vram_free_bytes"] == 5 * GB
    assert "ext" in inv["models"]
    r = await http.post(f"{url}/v2/workers/stop", json={"worker_id": "ext-1"})
    assert r.status_code == 409
    r = await start_worker(http, url, "ext", "0")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "MODEL_INCOMPATIBLE"
    engine.kill()
    await asyncio.to_thread(engine.wait, 10)
    await eventually(lambda: fake.last_workers()["ext-1"].status == "failed")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0


async def test_in_process_agent_from_config(
    orchestrator: tuple[FakeOrchestrator, RunningServer], http: Any, tmp_path: Path
) -> None:
    fake, server = orchestrator
    config = PoolAgentConfig.load(agent_config(tmp_path, server.url), env=os.environ)
    agent = await PoolAgent.from_config(config)
    await agent.start()
    try:
        await eventually(lambda: len(fake.heartbeats) >= 1)
        worker = agent.workers.start_worker("sim-small", "0")
        await eventually(lambda: str(worker.status) == "ready")
        assert worker.handle is not None
        pid = worker.handle.pid  # type: ignore[attr-defined]
        os.kill(pid, 0)  # the engine is a real child process
    finally:
        await agent.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
