"""The daemon's HTTP API in process (httpx ASGI transport), with a scripted worker client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from orchestrator_core import TaskSubmitRequest
from orchestratord import MemoryStore, SqliteStore, create_app
from orchestratord.logs import JsonFormatter
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


def parse_sse(text: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(id, event, data) of every event in an SSE body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return out


class Daemon:
    """The app in process plus its doubles."""

    def __init__(self, client: httpx.AsyncClient, app: Any, worker: ScriptedWorkerClient):
        self.client = client
        self.app = app
        self.worker = worker
        self.orch = app.state.orchestrator

    @contextlib.asynccontextmanager
    async def heartbeats(self, pool_id: str = "pool-a") -> AsyncIterator[None]:
        """Heartbeat like a pool agent (every 20 ms) while the block runs: a worker the
        daemon marked failed comes back when its pool reports it ready again."""
        workers = pool_registration(pool_id)["workers"]

        async def beat() -> None:
            while True:
                await asyncio.sleep(0.02)
                body = {"sent_at": self.orch.clock(), "workers": workers}
                await self.client.post(f"/v2/pools/{pool_id}/heartbeat", json=body)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def submit(self, **fields: Any) -> httpx.Response:
        body = {"model": "m1", "prompt": "hello there", "max_tokens": 8, **fields}
        return await self.client.post("/v2/tasks", json=body)

    async def register(self, **kw: Any) -> httpx.Response:
        return await self.client.post("/v2/pools/register", json=pool_registration(**kw))

    async def events(self, job_id: str, last: int | None = None) -> list[Any]:
        headers = {} if last is None else {"Last-Event-ID": str(last)}
        r = await self.client.get(f"/v2/tasks/{job_id}/events", headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        return parse_sse(r.text)

    async def status(self, job_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v2/tasks/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def until_status(self, job_id: str, *statuses: str) -> dict[str, Any]:
        await wait_for(
            lambda: (
                job_id not in self.orch.active
                or str(self.orch.active[job_id].job.status) in statuses
            )
        )
        return await self.status(job_id)


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    worker = ScriptedWorkerClient()
    app = create_app(
        make_config(queue={"capacity": 3}),
        store=MemoryStore(),
        worker_client=worker,
        pool_client=RecordingPoolAgentClient(),
    )
    async with running_app(app) as client:
        yield Daemon(client, app, worker)


async def test_submit_returns_202_with_position_and_events_url(daemon: Daemon) -> None:
    r = await daemon.submit()
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert body["queue_position"] == 0
    assert body["events_url"] == f"/v2/tasks/{body['job_id']}/events"
    assert r.headers["location"] == f"/v2/tasks/{body['job_id']}"
    status = await daemon.status(body["job_id"])
    assert status["status"] == "queued"
    assert status["model"] == "m1"
    assert len(status["prompt_hash"]) == 64


async def test_a_waiting_job_explains_itself_and_logs_carry_the_correlation_id(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestratord")
    r = await daemon.client.post(
        "/v2/tasks",
        json={"model": "m1", "prompt": "p", "max_tokens": 2},
        headers={"X-Correlation-Id": "trace-42"},
    )
    job_id = r.json()["job_id"]
    status = await daemon.status(job_id)
    assert status["explanation"] is not None and status["explanation"]["job_id"] == job_id
    admitted = [rec for rec in caplog.records if getattr(rec, "event", "") == "job.admitted"]
    assert admitted and admitted[0].correlation_id == "trace-42"  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(admitted[0]))
    assert line["event"] == "job.admitted" and line["job_id"] == job_id
    assert line["correlation_id"] == "trace-42"


async def test_alias_resolves_to_the_catalog_model(daemon: Daemon) -> None:
    r = await daemon.submit(model="model-one")
    assert r.status_code == 202
    assert (await daemon.status(r.json()["job_id"]))["model"] == "m1"


async def test_job_runs_end_to_end_and_the_stream_is_in_order(daemon: Daemon) -> None:
    assert (await daemon.register()).status_code == 200
    r = await daemon.submit()
    job_id = r.json()["job_id"]
    final = await daemon.until_status(job_id, "completed")
    assert final["status"] == "completed", final
    assert final["tokens_generated"] == 3
    events = await daemon.events(job_id)
    kinds = [k for _, k, _ in events]
    assert kinds == ["queued", "started", "token", "token", "token", "metrics", "end"]
    assert [i for i, _, _ in events] == list(range(1, len(events) + 1))
    assert "".join(d["t"] for _, k, d in events if k == "token") == "Hello, world"
    assert events[-1][2]["tokens"] == 3
    # the worker got the prompt; the finished job keeps only its hash
    assert daemon.worker.calls[0][1].prompt == "hello there"
    row = await daemon.orch.store.get_job(job_id)
    assert row.job.prompt is None and row.job.prompt_hash == final["prompt_hash"]


@pytest.mark.parametrize("batch", [2, 3, 16])
async def test_tokens_read_in_batches_become_one_event_each_in_order(
    daemon: Daemon, batch: int
) -> None:
    words = [f"w{i} " for i in range(7)]
    daemon.worker.default = WorkerScript(tokens=words, batch=batch)
    await daemon.register()
    job_id = (await daemon.submit()).json()["job_id"]
    final = await daemon.until_status(job_id, "completed")
    assert final["tokens_generated"] == len(words)
    events = await daemon.events(job_id)
    assert [i for i, _, _ in events] == list(range(1, len(events) + 1))
    tokens = [d for _, k, d in events if k == "token"]
    assert [d["i"] for d in tokens] == list(range(len(words)))
    assert [d["t"] for d in tokens] == words
    assert events[-1][1] == "end" and events[-1][2]["tokens"] == len(words)


async def test_last_event_id_resumes_without_loss_or_duplicates(daemon: Daemon) -> None:
    await daemon.register()
    job_id = (await daemon.submit()).json()["job_id"]
    await daemon.until_status(job_id, "completed")
    full = await daemon.events(job_id)
    for cut in range(len(full) + 1):
        rest = await daemon.events(job_id, last=cut)
        assert rest == full[cut:]


async def test_finished_job_replays_from_the_store(daemon: Daemon) -> None:
    await daemon.register()
    job_id = (await daemon.submit()).json()["job_id"]
    await daemon.until_status(job_id, "completed")
    full = await daemon.events(job_id)
    daemon.orch.ctx.jobs.recent.clear()  # forget the in-memory stream: replay comes from the store
    assert await daemon.events(job_id) == full
    assert await daemon.events(job_id, last=4) == full[4:]


async def test_queue_full_is_429_with_retry_after(daemon: Daemon) -> None:
    for _ in range(3):
        assert (await daemon.submit()).status_code == 202
    r = await daemon.submit()
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "QUEUE_FULL"


async def test_drop_oldest_batch_even_while_the_dropped_job_is_being_admitted(
    tmp_path: Path,
) -> None:
    # SQLite: admissions really wait for the writer, so they interleave
    app = create_app(
        make_config(queue={"capacity": 1, "full_policy": "drop-oldest-batch"}),
        store=SqliteStore(tmp_path / "d.sqlite3"),
        worker_client=ScriptedWorkerClient(),
        pool_client=RecordingPoolAgentClient(),
    )
    async with running_app(app) as client:
        body = {"model": "m1", "prompt": "p", "max_tokens": 2, "priority": "batch"}
        replies = await asyncio.gather(*(client.post("/v2/tasks", json=body) for _ in range(4)))
        assert [r.status_code for r in replies] == [202] * 4
        ids = [r.json()["job_id"] for r in replies]
        states = [(await client.get(f"/v2/tasks/{i}")).json() for i in ids]
        assert [s["status"] for s in states].count("queued") == 1
        for state, job_id in zip(states, ids, strict=True):
            if state["status"] == "queued":
                continue  # its stream stays open: nothing runs it
            assert state["error"]["code"] == "QUEUE_FULL"
            events = parse_sse((await client.get(f"/v2/tasks/{job_id}/events")).text)
            assert [(i, k) for i, k, _ in events] == [(1, "queued"), (2, "error")]


async def test_cancel_queued_job(daemon: Daemon) -> None:
    job_id = (await daemon.submit()).json()["job_id"]
    r = await daemon.client.delete(f"/v2/tasks/{job_id}")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert r.json()["error"]["code"] == "CANCELLED"
    again = await daemon.client.post(f"/v2/tasks/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    events = await daemon.events(job_id)
    assert [k for _, k, _ in events] == ["queued", "error"]
    assert events[-1][2]["code"] == "CANCELLED"


async def test_cancel_running_job_reaches_the_worker(daemon: Daemon) -> None:
    daemon.worker.default = WorkerScript(hang=True, token_delay_s=0.01)
    await daemon.register()
    job_id = (await daemon.submit()).json()["job_id"]
    await wait_for(lambda: daemon.orch.active[job_id].row.tokens >= 2)
    r = await daemon.client.delete(f"/v2/tasks/{job_id}")
    assert r.json()["status"] == "cancelled"
    assert daemon.worker.cancels and daemon.worker.cancels[0][1] == job_id
    events = await daemon.events(job_id)
    assert events[-1][1] == "error" and events[-1][2]["code"] == "CANCELLED"
    assert sum(1 for _, k, _ in events if k in ("end", "error")) == 1


async def test_cancel_is_enforced_when_the_worker_does_not_confirm(daemon: Daemon) -> None:
    daemon.worker.default = WorkerScript(hang=True, token_delay_s=0.01)
    daemon.worker.cancel_confirms = False
    await daemon.register()
    job_id = (await daemon.submit()).json()["job_id"]
    await wait_for(lambda: daemon.orch.active[job_id].row.tokens >= 1)
    r = await daemon.client.delete(f"/v2/tasks/{job_id}")
    assert r.json()["status"] == "cancelled"  # after the (1 s in tests) cancel deadline


async def test_timeout_fails_with_deadline_exceeded(daemon: Daemon) -> None:
    daemon.worker.default = WorkerScript(hang=True, token_delay_s=0.01)
    await daemon.register()
    job_id = (await daemon.submit(timeout_s=0.3)).json()["job_id"]
    final = await daemon.until_status(job_id, "failed")
    await wait_for(lambda: job_id not in daemon.orch.active, timeout_s=3)
    final = await daemon.status(job_id)
    assert final["status"] == "failed"
    assert final["error"]["code"] == "DEADLINE_EXCEEDED"
    kinds = [k for _, k, _ in await daemon.events(job_id)]
    assert kinds[-1] == "error" and kinds.count("error") == 1


async def test_worker_dies_before_first_token_is_retried(daemon: Daemon) -> None:
    await daemon.register()
    uri = "http://worker-pool-a-0"
    daemon.worker.plan(uri, WorkerScript(failure="lost_before_token"))
    daemon.worker.plan(uri, WorkerScript(failure="unreachable"))
    async with daemon.heartbeats():
        job_id = (await daemon.submit()).json()["job_id"]
        await wait_for(lambda: job_id not in daemon.orch.active)
    final = await daemon.status(job_id)
    assert final["status"] == "completed"
    assert final["attempts"] == 3
    kinds = [k for _, k, _ in await daemon.events(job_id)]
    assert kinds.count("started") == 1 and kinds[-1] == "end"


async def test_a_failed_worker_gets_no_jobs_until_its_pool_reports_it(daemon: Daemon) -> None:
    await daemon.register(workers=2)
    daemon.worker.plan("http://worker-pool-a-0", WorkerScript(failure="unreachable"))
    first = (await daemon.submit()).json()["job_id"]
    await wait_for(lambda: first not in daemon.orch.active)
    assert (await daemon.status(first))["worker_id"] == "pool-a-w1"  # the retry went elsewhere
    calls = [uri for uri, _ in daemon.worker.calls]
    assert calls == ["http://worker-pool-a-0", "http://worker-pool-a-1"]


async def test_worker_dies_after_first_token_fails_worker_failed(daemon: Daemon) -> None:
    await daemon.register()
    daemon.worker.plan("http://worker-pool-a-0", WorkerScript(failure="lost_after_tokens"))
    job_id = (await daemon.submit()).json()["job_id"]
    await wait_for(lambda: job_id not in daemon.orch.active)
    final = await daemon.status(job_id)
    assert final["status"] == "failed"
    assert final["error"]["code"] == "WORKER_FAILED"
    assert final["attempts"] == 1
    events = await daemon.events(job_id)
    assert [k for _, k, _ in events] == ["queued", "started", "token", "error"]


async def test_retries_run_out_with_dispatch_failed(daemon: Daemon) -> None:
    await daemon.register()
    daemon.worker.default = WorkerScript(failure="unreachable")
    async with daemon.heartbeats():
        job_id = (await daemon.submit()).json()["job_id"]
        await wait_for(lambda: job_id not in daemon.orch.active)
    final = await daemon.status(job_id)
    assert final["error"]["code"] == "DISPATCH_FAILED"
    assert final["attempts"] == 3


async def test_permanent_worker_error_is_not_retried(daemon: Daemon) -> None:
    await daemon.register()
    daemon.worker.default = WorkerScript(failure="error", error_code="CONTEXT_TOO_LARGE")
    job_id = (await daemon.submit()).json()["job_id"]
    await wait_for(lambda: job_id not in daemon.orch.active)
    final = await daemon.status(job_id)
    assert final["error"]["code"] == "CONTEXT_TOO_LARGE" and final["attempts"] == 1


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (
            {"model": "m1", "prompt": "x", "max_tokens": 1, "temperature": 5.0},
            "INVALID_PARAMETER",
            "temperature",
        ),
        ({"model": "m1", "prompt": "x"}, "INVALID_REQUEST", "max_tokens"),
        (
            {"model": "m1", "prompt": "x", "max_tokens": 1, "priority": "urgent"},
            "INVALID_PARAMETER",
            "priority",
        ),
        ({"model": "m1", "prompt": "x", "max_tokens": 1, "bogus": 1}, "INVALID_REQUEST", "bogus"),
    ],
)
async def test_validation_errors_match_the_core_messages(
    daemon: Daemon, body: dict[str, Any], code: str, field: str
) -> None:
    r = await daemon.client.post("/v2/tasks", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == code
    assert err["details"]["fields"][0]["field"] == field
    with pytest.raises(Exception) as expected:
        TaskSubmitRequest.parse(body)
    assert err["message"] == expected.value.message  # type: ignore[attr-defined]
    assert err["correlation_id"] == r.headers["x-correlation-id"]


async def test_malformed_json_and_non_object_bodies(daemon: Daemon) -> None:
    r = await daemon.client.post("/v2/tasks", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"
    assert r.json()["error"]["message"].startswith("body: malformed JSON")
    r = await daemon.client.post("/v2/tasks", json=[1, 2])
    assert r.status_code == 400 and r.json()["error"]["message"] == "body: must be a JSON object"


async def test_unknown_model_and_context_too_large(daemon: Daemon) -> None:
    r = await daemon.submit(model="nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "MODEL_NOT_FOUND"
    r = await daemon.submit(prompt="x" * 16_000, max_tokens=100)
    assert r.status_code == 400 and r.json()["error"]["code"] == "CONTEXT_TOO_LARGE"
    r = await daemon.submit(prompt="x" * 4000, max_tokens=3000)  # ~1000 + 3000 <= 4096
    assert r.status_code == 202


async def test_models_reported_by_pools_are_accepted(daemon: Daemon) -> None:
    await daemon.register(model="pool-only-model")
    r = await daemon.submit(model="pool-only-model")
    assert r.status_code == 202, r.text


async def test_error_paths_all_use_the_envelope(daemon: Daemon) -> None:
    cases = [
        (await daemon.client.get("/nope"), 404, "ROUTE_NOT_FOUND"),
        (await daemon.client.put("/v2/tasks"), 405, "METHOD_NOT_ALLOWED"),
        (await daemon.client.get("/v2/tasks/job-unknown"), 404, "JOB_NOT_FOUND"),
        (await daemon.client.delete("/v2/tasks/job-unknown"), 404, "JOB_NOT_FOUND"),
        (await daemon.client.get("/v2/tasks/job-unknown/events"), 404, "JOB_NOT_FOUND"),
        (await daemon.client.get("/v2/pools/nope"), 404, "POOL_NOT_FOUND"),
        (await daemon.client.get("/v2/tasks?limit=0"), 400, "INVALID_PARAMETER"),
        (await daemon.client.get("/v2/tasks?status=bogus"), 400, "INVALID_PARAMETER"),
        (await daemon.client.post("/v2/tasks", content=b"x" * (3 << 20)), 413, "PAYLOAD_TOO_LARGE"),
    ]
    for r, status, code in cases:
        assert r.status_code == status, (r.request.url, r.text)
        err = r.json()["error"]
        assert err["code"] == code, (r.request.url, err)
        assert err["message"]
        assert err["correlation_id"] == r.headers["x-correlation-id"]


async def test_correlation_id_is_kept_when_valid_and_replaced_when_not(daemon: Daemon) -> None:
    r = await daemon.client.get("/health", headers={"X-Correlation-Id": "abc-123"})
    assert r.headers["x-correlation-id"] == "abc-123"
    r = await daemon.client.get("/health", headers={"X-Correlation-Id": "bad id!"})
    assert r.headers["x-correlation-id"] != "bad id!"
    assert len(r.headers["x-correlation-id"]) == 32


async def test_list_filters_and_paginates(daemon: Daemon) -> None:
    ids = [
        (await daemon.submit(priority="batch", session_id="s1")).json()["job_id"] for _ in range(3)
    ]
    r = await daemon.client.get("/v2/tasks", params={"limit": 2})
    page = r.json()
    assert [j["job_id"] for j in page["items"]] == ids[::-1][:2]
    r = await daemon.client.get("/v2/tasks", params={"limit": 2, "cursor": page["next_cursor"]})
    assert [j["job_id"] for j in r.json()["items"]] == [ids[0]]
    assert r.json()["next_cursor"] is None
    r = await daemon.client.get("/v2/tasks", params={"session": "other"})
    assert r.json()["items"] == []
    r = await daemon.client.get("/v2/tasks", params={"status": "queued", "priority": "batch"})
    assert len(r.json()["items"]) == 3


async def test_pools_register_conflict_heartbeat_unregister(daemon: Daemon) -> None:
    r = await daemon.register()
    assert r.status_code == 200 and r.json()["status"] == "online"
    other = pool_registration()
    other["endpoint"] = "http://elsewhere"
    r = await daemon.client.post("/v2/pools/register", json=other)
    assert r.status_code == 409 and r.json()["error"]["code"] == "POOL_CONFLICT"
    beat = {"sent_at": daemon.orch.clock(), "workers": [], "gpus": []}
    r = await daemon.client.post("/v2/pools/pool-a/heartbeat", json=beat)
    assert r.status_code == 200 and r.json()["workers"] == []
    stale = {"sent_at": beat["sent_at"] - 5}
    r = await daemon.client.post("/v2/pools/pool-a/heartbeat", json=stale)
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"
    r = await daemon.client.post("/v2/pools/nope/heartbeat", json=beat)
    assert r.status_code == 404 and r.json()["error"]["code"] == "POOL_NOT_FOUND"
    assert [p["pool_id"] for p in (await daemon.client.get("/v2/pools")).json()["pools"]] == [
        "pool-a"
    ]
    assert (await daemon.client.delete("/v2/pools/pool-a")).status_code == 200
    assert (await daemon.client.get("/v2/pools")).json()["pools"] == []


async def test_health_ready_metrics(daemon: Daemon) -> None:
    assert (await daemon.client.get("/health")).json()["status"] == "ok"
    assert (await daemon.client.get("/ready")).status_code == 200
    await daemon.submit()
    text = (await daemon.client.get("/metrics")).text
    assert 'orchestratord_queue_depth{priority="interactive"} 1.0' in text
    assert 'orchestratord_tasks_enqueued_total{priority="interactive"} 1.0' in text
    assert "job-" not in text  # never a job id as a label


async def test_openapi_documents_the_bodies_and_no_422(daemon: Daemon) -> None:
    doc = (await daemon.client.get("/openapi.json")).json()
    op = doc["paths"]["/v2/tasks"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/TaskSubmitRequest"
    assert "TaskSubmitRequest" in doc["components"]["schemas"]
    assert {"202", "400", "404", "429"} <= set(op["responses"])
    for path in doc["paths"].values():
        for method in path.values():
            assert "422" not in method["responses"]


async def test_rhai_policy_hot_swap_runs_jobs_and_bad_scripts_are_refused(daemon: Daemon) -> None:
    await daemon.register()
    bad = await daemon.client.put(
        "/v2/scheduler", json={"policy": "rhai", "script": "fn schedule(ctx) { let x = ; }"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_PARAMETER"
    assert "script" in bad.json()["error"]["message"]
    missing = await daemon.client.put("/v2/scheduler", json={"policy": "rhai"})
    assert missing.status_code == 400 and "script" in missing.json()["error"]["message"]
    assert (await daemon.client.get("/v2/scheduler")).json()["policy"] == "priority"
    script = "fn schedule(ctx) { platform_schedule(ctx) }"
    r = await daemon.client.put("/v2/scheduler", json={"policy": "rhai", "script": script})
    assert r.status_code == 200, r.text
    assert r.json()["policy"] == "rhai" and r.json()["script"] == script
    job_id = (await daemon.submit()).json()["job_id"]
    await wait_for(lambda: job_id not in daemon.orch.active)
    assert (await daemon.status(job_id))["status"] == "completed"


async def test_a_failing_rhai_policy_falls_back_and_is_counted(daemon: Daemon) -> None:
    await daemon.register()
    script = 'fn schedule(ctx) { throw "boom" }'
    r = await daemon.client.put("/v2/scheduler", json={"policy": "rhai", "script": script})
    assert r.status_code == 200, r.text
    job_id = (await daemon.submit()).json()["job_id"]
    await wait_for(lambda: job_id not in daemon.orch.active)
    assert (await daemon.status(job_id))["status"] == "completed"  # the built-in decided
    view = (await daemon.client.get("/v2/scheduler")).json()
    assert view["fallbacks"] >= 1 and view["errors"] >= 1
    metrics = (await daemon.client.get("/metrics")).text
    assert "orchestratord_scheduler_fallbacks_total" in metrics
    assert 'orchestratord_scheduler_errors_total{kind="throw"}' in metrics
