"""The simulated engine over real HTTP on loopback (in-process uvicorn on a free port, and
the ``llorch-sim engine`` program as a real process).

Covers the native worker protocol of docs/pool-agent.md (event order, exactly one terminal event,
max_tokens, stop strings, seeds, cancel), the OpenAI-compatible endpoint, the timing model,
and every fault injection.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from llorch_pool.serving import RunningServer, serve_app
from llorch_pool.sim import EngineFaults, SimEngineConfig, SimulatedEngine
from llorch_pool.sim.cli import CRASH_EXIT_CODE
from orchestrator_core.sse import SseEvent, aiter_sse

pytestmark = pytest.mark.timeout(60)

TERMINAL = {"end", "error"}


class EngineUnderTest:
    """A simulated engine served on a free loopback port, with an HTTP client."""

    def __init__(self, engine: SimulatedEngine, server: RunningServer, client: httpx.AsyncClient):
        self.engine = engine
        self.server = server
        self.client = client
        self.url = server.url

    async def execute(self, **body: Any) -> list[SseEvent]:
        """Run one job to its end and return every event."""
        async with self.client.stream("POST", f"{self.url}/execute", json=body) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            return [event async for event in aiter_sse(response.aiter_text())]

    async def cancel(self, job_id: str) -> httpx.Response:
        return await self.client.post(f"{self.url}/cancel", json={"job_id": job_id})


@pytest.fixture
async def make_engine() -> AsyncIterator[Any]:
    """Factory: ``await make_engine(config=..., faults=...)``; every server is stopped after."""
    started: list[EngineUnderTest] = []
    client = httpx.AsyncClient(timeout=10.0, trust_env=False)

    async def make(**kwargs: Any) -> EngineUnderTest:
        faults = kwargs.pop("faults", None)
        config = SimEngineConfig(**({"ttft_s": 0.0, "tokens_per_s": 0.0} | kwargs))
        engine = SimulatedEngine(config, faults)
        server = await serve_app(engine.app)
        under_test = EngineUnderTest(engine, server, client)
        started.append(under_test)
        return under_test

    yield make
    for e in started:
        e.engine.kill()
        await e.server.stop(force=True)
    await client.aclose()


def assert_well_formed(events: list[SseEvent], job_id: str) -> None:
    """started first, token indexes 0..n-1, exactly one terminal event and it is last."""
    names = [e.event for e in events]
    assert names[0] == "started"
    assert events[0].json()["job_id"] == job_id
    assert sum(1 for n in names if n in TERMINAL) == 1
    assert names[-1] in TERMINAL
    assert set(names) <= {"started", "token", "metrics", "end", "error"}
    indexes = [e.json()["i"] for e in events if e.event == "token"]
    assert indexes == list(range(len(indexes)))


async def drain(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], into: list[SseEvent]
) -> None:
    """POST ``body`` to ``url`` and append every event of the stream to ``into``."""
    async with client.stream("POST", url, json=body) as response:
        async for event in aiter_sse(response.aiter_text()):
            into.append(event)


def text_of(events: list[SseEvent]) -> str:
    return "".join(e.json()["t"] for e in events if e.event == "token")


async def test_a_job_streams_started_tokens_metrics_and_one_end(make_engine: Any) -> None:
    eng = await make_engine(worker_id="w-1", metrics_every=4)
    events = await eng.execute(job_id="job-1", prompt="hello", max_tokens=10, seed=7)
    assert_well_formed(events, "job-1")
    assert events[0].json() == {"job_id": "job-1", "worker_id": "w-1"}
    assert [e.event for e in events].count("token") == 10
    assert events[-1].event == "end"
    assert events[-1].json() == {"tokens": 10, "finish_reason": "length"}
    metrics = [e.json() for e in events if e.event == "metrics"]
    assert len(metrics) >= 2  # after tokens 4 and 8, and before the end
    assert metrics[-1]["tokens"] == 10
    assert {"tokens", "elapsed_ms", "ttft_ms", "tokens_per_s"} <= set(metrics[-1])
    health = (await eng.client.get(f"{eng.url}/health")).json()
    assert health["active_jobs"] == 0
    assert health["jobs_completed"] == 1


async def test_same_seed_same_text_different_seed_different_text(make_engine: Any) -> None:
    eng = await make_engine()
    a = text_of(await eng.execute(job_id="a", prompt="p", max_tokens=30, seed=42))
    b = text_of(await eng.execute(job_id="b", prompt="p", max_tokens=30, seed=42))
    c = text_of(await eng.execute(job_id="c", prompt="p", max_tokens=30, seed=43))
    d = text_of(await eng.execute(job_id="d", prompt="other", max_tokens=30, seed=42))
    assert a == b
    assert a != c
    assert a != d


async def test_without_a_seed_outputs_vary(make_engine: Any) -> None:
    eng = await make_engine()
    runs = {
        text_of(await eng.execute(job_id=f"j{i}", prompt="p", max_tokens=20, temperature=1.0))
        for i in range(3)
    }
    assert len(runs) == 3


async def test_a_stop_string_cuts_the_text_and_ends_with_stop(make_engine: Any) -> None:
    eng = await make_engine()
    full = text_of(await eng.execute(job_id="full", prompt="s", max_tokens=40, seed=3))
    stop = full[len(full) // 2 : len(full) // 2 + 4]  # a piece straddling tokens, likely
    events = await eng.execute(job_id="cut", prompt="s", max_tokens=40, seed=3, stop=[stop])
    assert_well_formed(events, "cut")
    assert events[-1].event == "end"
    assert events[-1].json()["finish_reason"] == "stop"
    text = text_of(events)
    assert text == full[: full.find(stop)]
    assert stop not in text


async def test_cancel_ends_the_stream_with_cancelled_and_is_idempotent(make_engine: Any) -> None:
    eng = await make_engine(tokens_per_s=50.0)
    events: list[SseEvent] = []
    body = {"job_id": "long", "prompt": "x", "max_tokens": 10_000}
    async with eng.client.stream("POST", f"{eng.url}/execute", json=body) as response:
        async for event in aiter_sse(response.aiter_text()):
            events.append(event)
            if event.event == "token" and event.json()["i"] == 2:
                first = await eng.cancel("long")
                assert first.status_code == 202
                assert first.json()["cancelled"] is True
    assert_well_formed(events, "long")
    assert events[-1].event == "error"
    assert events[-1].json()["code"] == "CANCELLED"
    again = await eng.cancel("long")
    assert again.status_code == 202
    assert (await eng.cancel("never-seen")).status_code == 202
    assert eng.engine.stats.active_jobs == 0
    assert eng.engine.stats.jobs_cancelled == 1


async def test_a_cancel_that_arrives_before_the_job_still_cancels_it(make_engine: Any) -> None:
    eng = await make_engine()
    assert (await eng.cancel("early")).status_code == 202
    events = await eng.execute(job_id="early", prompt="x", max_tokens=5)
    assert [e.event for e in events] == ["started", "error"]
    assert events[-1].json()["code"] == "CANCELLED"


async def test_crash_fault_drops_the_connection_without_a_terminal_event(make_engine: Any) -> None:
    eng = await make_engine(faults=EngineFaults(crash_after_tokens=3))
    events: list[SseEvent] = []
    body = {"job_id": "c", "prompt": "x", "max_tokens": 10}
    with pytest.raises(httpx.HTTPError):  # RemoteProtocolError: incomplete chunked read
        await drain(eng.client, f"{eng.url}/execute", body, events)
    assert [e.event for e in events] == ["started", "token", "token", "token"]
    # The engine itself is still alive (stream scope): the next job works.
    eng.engine.faults = EngineFaults()
    done = await eng.execute(job_id="after", prompt="x", max_tokens=2)
    assert done[-1].event == "end"


async def test_engine_scope_crash_calls_the_crash_hook(make_engine: Any) -> None:
    eng = await make_engine(faults=EngineFaults(crash_after_tokens=1, crash_scope="engine"))
    crashed: list[bool] = []
    eng.engine.on_crash = lambda: crashed.append(True)
    with pytest.raises(httpx.HTTPError):
        await eng.execute(job_id="c", prompt="x", max_tokens=10)
    assert crashed == [True]


async def test_hang_fault_sends_nothing_until_cancelled(make_engine: Any) -> None:
    eng = await make_engine(faults=EngineFaults(hang_after_tokens=2))
    events: list[SseEvent] = []
    body = {"job_id": "h", "prompt": "x", "max_tokens": 10}

    async def collect() -> None:
        async with eng.client.stream("POST", f"{eng.url}/execute", json=body) as response:
            async for event in aiter_sse(response.aiter_text()):
                events.append(event)

    reader = asyncio.create_task(collect())
    deadline = time.monotonic() + 5
    while len(events) < 3:  # started + 2 tokens
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    assert len(events) == 3, "a hung engine sent more"
    assert eng.engine.stats.active_jobs == 1
    await eng.cancel("h")
    await asyncio.wait_for(reader, 5)
    assert [e.event for e in events] == ["started", "token", "token", "error"]
    assert events[-1].json()["code"] == "CANCELLED"


async def test_error_fault_ends_with_worker_failed(make_engine: Any) -> None:
    eng = await make_engine(faults=EngineFaults(error_after_tokens=2))
    events = await eng.execute(job_id="e", prompt="x", max_tokens=10)
    assert_well_formed(events, "e")
    assert events[-1].event == "error"
    assert events[-1].json()["code"] == "WORKER_FAILED"
    assert [e.event for e in events].count("token") == 2


async def test_refuse_fault_answers_503_with_the_error_envelope(make_engine: Any) -> None:
    eng = await make_engine(faults=EngineFaults(refuse=True))
    r = await eng.client.post(
        f"{eng.url}/execute", json={"job_id": "r", "prompt": "x", "max_tokens": 1}
    )
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "POOL_UNAVAILABLE"
    assert r.headers["retry-after"] == "1"
    # Faults can be changed at run time over HTTP.
    r = await eng.client.post(f"{eng.url}/sim/faults", json={"refuse": False})
    assert r.json()["refuse"] is False
    assert (await eng.execute(job_id="ok", prompt="x", max_tokens=1))[-1].event == "end"


async def test_a_full_engine_refuses_unless_it_queues(make_engine: Any) -> None:
    eng = await make_engine(tokens_per_s=20.0, max_concurrency=1)
    body = {"job_id": "one", "prompt": "x", "max_tokens": 4}
    first = asyncio.create_task(eng.execute(**body))
    while eng.engine.stats.active_jobs == 0:
        await asyncio.sleep(0.005)
    r = await eng.client.post(
        f"{eng.url}/execute", json={"job_id": "two", "prompt": "x", "max_tokens": 1}
    )
    assert r.status_code == 503
    assert "busy" in r.json()["error"]["message"]
    dup = await eng.client.post(f"{eng.url}/execute", json=body)
    assert dup.status_code in (409, 503)
    assert (await first)[-1].event == "end"

    queued = await make_engine(tokens_per_s=50.0, max_concurrency=1, queue_when_busy=True)
    results = await asyncio.gather(
        *(queued.execute(job_id=f"q{i}", prompt="x", max_tokens=3) for i in range(3))
    )
    assert all(r[-1].event == "end" for r in results)


async def test_a_loading_model_answers_503_then_serves(make_engine: Any) -> None:
    eng = await make_engine(load_time_s=0.4)
    health = await eng.client.get(f"{eng.url}/health")
    assert health.status_code == 503
    assert health.json()["status"] == "loading"
    assert (await eng.client.get(f"{eng.url}/v1/models")).status_code == 503
    r = await eng.client.post(
        f"{eng.url}/execute", json={"job_id": "l", "prompt": "x", "max_tokens": 1}
    )
    assert r.status_code == 503
    deadline = time.monotonic() + 5
    while (await eng.client.get(f"{eng.url}/health")).status_code != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await eng.execute(job_id="l2", prompt="x", max_tokens=1))[-1].event == "end"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "max_tokens": 1}, "job_id"),
        ({"job_id": "j", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"job_id": "j", "prompt": "x", "max_tokens": 1, "temperature": 9}, "temperature"),
        ({"job_id": "j", "prompt": "x", "max_tokens": 1, "stop": ["a"] * 5}, "stop"),
        ({"job_id": "j", "prompt": "x", "max_tokens": 1, "seed": -1}, "seed"),
    ],
)
async def test_bad_requests_get_400_naming_the_field(
    make_engine: Any, body: dict[str, Any], field: str
) -> None:
    eng = await make_engine()
    r = await eng.client.post(f"{eng.url}/execute", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] in ("INVALID_REQUEST", "INVALID_PARAMETER")
    assert field in err["message"]
    assert "Traceback" not in r.text
    bad = await eng.client.post(f"{eng.url}/execute", content=b"{nope")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_REQUEST"


async def test_timing_model_first_token_and_rate_are_not_faster_than_configured(
    make_engine: Any,
) -> None:
    eng = await make_engine(ttft_s=0.15, tokens_per_s=100.0)
    t0 = time.monotonic()
    body = {"job_id": "t", "prompt": "x", "max_tokens": 21}
    first_token_at = None
    async with eng.client.stream("POST", f"{eng.url}/execute", json=body) as response:
        async for event in aiter_sse(response.aiter_text()):
            if event.event == "token" and first_token_at is None:
                first_token_at = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first_token_at is not None
    assert first_token_at >= 0.15
    assert total >= 0.15 + 20 / 100.0  # 20 gaps of 10 ms after the first token


async def test_correlation_id_is_echoed(make_engine: Any) -> None:
    eng = await make_engine()
    r = await eng.client.post(
        f"{eng.url}/cancel", json={"job_id": "x"}, headers={"X-Correlation-Id": "abc-123"}
    )
    assert r.headers["x-correlation-id"] == "abc-123"


# -- OpenAI-compatible endpoint -----------------------------------------------------------


async def openai_stream(eng: EngineUnderTest, **body: Any) -> list[str]:
    async with eng.client.stream(
        "POST", f"{eng.url}/v1/completions", json={"stream": True} | body
    ) as response:
        assert response.status_code == 200
        return [e.data async for e in aiter_sse(response.aiter_text())]


async def test_openai_streaming_sends_chunks_then_done(make_engine: Any) -> None:
    eng = await make_engine(model_ref="m1")
    models = (await eng.client.get(f"{eng.url}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["m1"]
    datas = await openai_stream(eng, model="m1", prompt="hi", max_tokens=6, seed=5)
    assert datas[-1] == "[DONE]"

    chunks = [json.loads(d) for d in datas[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["length"]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    # Same request, same seed, non-streaming: the same text and a usage block.
    whole = await eng.client.post(
        f"{eng.url}/v1/completions", json={"prompt": "hi", "max_tokens": 6, "seed": 5}
    )
    assert whole.json()["choices"][0]["text"] == text
    assert whole.json()["usage"]["completion_tokens"] == 6


async def test_openai_stop_and_usage_chunk(make_engine: Any) -> None:
    eng = await make_engine()

    full = await openai_stream(eng, prompt="q", max_tokens=30, seed=1)
    text = "".join(json.loads(d)["choices"][0]["text"] for d in full[:-1])
    stop = text[10:14]
    cut = await openai_stream(
        eng,
        prompt="q",
        max_tokens=30,
        seed=1,
        stop=stop,
        stream_options={"include_usage": True},
    )
    chunks = [json.loads(d) for d in cut[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == text[: text.find(stop)]


async def test_openai_closing_the_stream_cancels_the_generation(make_engine: Any) -> None:
    eng = await make_engine(tokens_per_s=50.0)
    body = {"prompt": "x", "max_tokens": 10_000, "stream": True}
    async with eng.client.stream("POST", f"{eng.url}/v1/completions", json=body) as response:
        async for _ in aiter_sse(response.aiter_text()):
            break
    deadline = time.monotonic() + 5
    while eng.engine.stats.active_jobs:
        assert time.monotonic() < deadline, "the engine kept generating for a closed stream"
        await asyncio.sleep(0.02)


async def test_openai_errors(make_engine: Any) -> None:
    eng = await make_engine(faults=EngineFaults(refuse=True))
    r = await eng.client.post(f"{eng.url}/v1/completions", json={"prompt": "x"})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "unavailable_error"
    r = await eng.client.post(f"{eng.url}/v1/completions", json={"max_tokens": 1})
    assert r.status_code == 400
    assert "prompt" in r.json()["error"]["message"]


# -- the llorch-sim engine program ----------------------------------------------------------


@pytest.fixture
def engine_process() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llorch_pool.sim", "engine", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        return proc, url

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        if p.stdout is not None:
            p.stdout.close()  # the URL pipe: left open, it is a ResourceWarning at collection


async def test_the_engine_program_prints_its_url_and_serves(engine_process: Any) -> None:
    proc, url = engine_process("--model", "m9", "--tokens-per-s", "0", "--ttft-ms", "0")
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        health = (await client.get(f"{url}/health")).json()
        assert health["model"] == "m9"
        body = {"job_id": "p", "prompt": "x", "max_tokens": 3}
        async with client.stream("POST", f"{url}/execute", json=body) as r:
            events = [e async for e in aiter_sse(r.aiter_text())]
    assert events[-1].json() == {"tokens": 3, "finish_reason": "length"}
    proc.terminate()
    assert await asyncio.to_thread(proc.wait, 10) in (0, -15)


async def test_engine_scope_crash_kills_the_engine_process(engine_process: Any) -> None:
    proc, url = engine_process(
        "--crash-after-tokens", "2", "--crash-scope", "engine", "--tokens-per-s", "0"
    )
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        body = {"job_id": "p", "prompt": "x", "max_tokens": 10}
        with pytest.raises(httpx.HTTPError):
            await drain(client, f"{url}/execute", body, [])
    assert await asyncio.to_thread(proc.wait, 10) == CRASH_EXIT_CODE
