"""The fast lane: which requests it serves, and that its answers keep the daemon's contract
(correlation ids, the error envelope or OpenAI's shape, 500 without a trace, 405/404 from
FastAPI for everything it does not serve)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from orchestrator_core import ErrorCode, OrchestratorError
from orchestratord import MemoryStore, create_app
from orchestratord.api.exchange import Exchange
from orchestratord.api.fastlane import FastLane
from orchestratord.testing import (
    RecordingPoolAgentClient,
    ScriptedWorkerClient,
    make_config,
    running_app,
)
from starlette.types import Receive, Scope, Send

pytestmark = pytest.mark.asyncio


async def _served(ex: Exchange) -> None:
    await ex.json({"path": ex.path})


async def _param(ex: Exchange, segment: str) -> None:
    await ex.json({"segment": segment})


async def _fallback(scope: Scope, receive: Receive, send: Send) -> None:
    body = b"fallback"
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _lane(**handlers: Any) -> FastLane:
    return FastLane(
        _fallback,
        exact={("POST", "/hot"): handlers.get("hot", _served)},
        param=[("GET", "/jobs/", "/events", _param)],
    )


async def _call(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lane") as c:
        return await c.request(method, path, **kw)


@pytest.mark.parametrize(
    ("method", "path", "served"),
    [
        ("POST", "/hot", True),
        ("GET", "/hot", False),
        ("POST", "/hot/", False),
        ("GET", "/jobs/abc/events", True),
        ("GET", "/jobs//events", False),
        ("GET", "/jobs/a/b/events", False),
        ("POST", "/jobs/abc/events", False),
        ("GET", "/jobs/abc/events/", False),
    ],
)
async def test_only_its_routes_are_served_the_rest_goes_on(
    method: str, path: str, served: bool
) -> None:
    r = await _call(_lane(), method, path)
    assert (r.status_code == 200) is served, (r.status_code, r.text)
    if served:
        assert r.headers["x-correlation-id"]
    else:
        assert r.text == "fallback"


async def test_a_param_route_gets_its_segment_and_the_correlation_id_comes_back() -> None:
    r = await _call(_lane(), "GET", "/jobs/j-1/events", headers={"X-Correlation-Id": "abc-1"})
    assert r.json() == {"segment": "j-1"}
    assert r.headers["x-correlation-id"] == "abc-1"
    bad = await _call(_lane(), "GET", "/jobs/j-1/events", headers={"X-Correlation-Id": "a b"})
    assert bad.headers["x-correlation-id"] != "a b" and len(bad.headers["x-correlation-id"]) == 32


async def test_refusals_are_envelopes_and_surprises_are_500_without_a_trace() -> None:
    async def refuses(ex: Exchange) -> None:
        raise OrchestratorError("model: nope", code=ErrorCode.MODEL_NOT_FOUND)

    async def breaks(ex: Exchange) -> None:
        raise KeyError("secret detail")

    r = await _call(_lane(hot=refuses), "POST", "/hot", headers={"X-Correlation-Id": "c-1"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "MODEL_NOT_FOUND"
    assert r.json()["error"]["correlation_id"] == "c-1"
    r = await _call(_lane(hot=breaks), "POST", "/hot")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "INTERNAL"
    assert "secret" not in r.text and "Traceback" not in r.text


async def test_a_body_over_the_limit_is_413_before_it_is_read() -> None:
    async def reads(ex: Exchange) -> None:
        await ex.json({"n": len(await ex.body(10))})

    r = await _call(_lane(hot=reads), "POST", "/hot", content=b"x" * 11)
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    r = await _call(_lane(hot=reads), "POST", "/hot", content=b"x" * 10)
    assert r.json() == {"n": 10}


async def test_the_daemon_keeps_its_contract_on_the_hot_routes() -> None:
    app = create_app(
        make_config(),
        store=MemoryStore(),
        worker_client=ScriptedWorkerClient(),
        pool_client=RecordingPoolAgentClient(),
    )
    async with running_app(app) as c:
        r = await c.get("/v1/completions")  # not served by the lane: FastAPI's 405
        assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
        r = await c.post("/v1/completions", content=b"{", headers={"X-Correlation-Id": "k-9"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert r.headers["x-correlation-id"] == "k-9"
        r = await c.post("/v2/tasks", content=b"[1]")
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"
        job = (
            await c.post("/v2/tasks", json={"model": "m1", "prompt": "p", "max_tokens": 4})
        ).json()["job_id"]
        r = await c.get(f"/v2/tasks/{job}/events", headers={"Last-Event-ID": "x1"})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["error"]["message"]
        r = await c.get("/v2/tasks/no-such-job/events")
        assert r.status_code == 404 and r.json()["error"]["code"] == "JOB_NOT_FOUND"
        schema = (await c.get("/openapi.json")).json()
        assert "post" in schema["paths"]["/v1/completions"]
        events = schema["paths"]["/v2/tasks/{job_id}/events"]["get"]
        assert {p["name"] for p in events["parameters"]} == {"job_id", "Last-Event-ID"}


async def test_a_client_that_leaves_mid_stream_cancels_its_handler_and_runs_the_callback() -> None:
    left = asyncio.Event()
    finished: list[str] = []

    async def follows(ex: Exchange) -> None:
        await ex.body(100)
        ex.on_disconnect(left.set)
        await ex.start_sse()
        try:
            await asyncio.sleep(30)
        finally:
            finished.append("cleaned up")

    lane = _lane(hot=follows)
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/hot", "headers": []}
    task = asyncio.ensure_future(lane(scope, receive, send))
    await asyncio.sleep(0.01)
    gone.set()
    await asyncio.wait_for(task, 2)  # ends, without a CancelledError escaping
    assert left.is_set() and finished == ["cleaned up"]
    assert not task.cancelled() and sent[0]["type"] == "http.response.start"
