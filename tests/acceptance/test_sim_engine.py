"""The simulated engine over real HTTP on loopback (in-process uvicorn on a free port, and
the ``llorch-sim engine`` program as a real process).

Covers the native worker protocol of docs/pool-agent.md (event order, exactly one terminal event,
max_tokens, stop strings, seeds, cancel, chat jobs), the OpenAI-compatible endpoints
(completions and chat completions, streamed and not, usage; parsed by the ``openai`` SDK when
it is installed), the timing model, every fault injection, and ``/sim/stats`` (when the
engine stops a job whose client went away).
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
from llorch_pool.sim import (
    EngineFaults,
    SimEngineConfig,
    SimulatedEngine,
    count_tokens,
    render_chat,
)
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
    assert events[-1].json() == {
        "tokens": 10,
        "finish_reason": "length",
        "prompt_tokens": 1,  # the simulator's tokenizer: one word
        "completion_tokens": 10,
    }
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


# -- chat jobs and usage ----------------------------------------------------------------

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
]
CHAT_PROMPT = "<|system|>\nYou are terse.\n<|user|>\nName a colour.\n<|assistant|>\n"


def test_the_chat_template_and_tokenizer_are_the_documented_ones() -> None:
    assert render_chat((m["role"], m["content"]) for m in CHAT) == CHAT_PROMPT
    assert count_tokens(CHAT_PROMPT) == 9  # 3 markers + 6 words
    assert count_tokens("") == 1


async def test_a_chat_job_over_execute_is_generated_from_the_rendered_messages(
    make_engine: Any,
) -> None:
    eng = await make_engine()
    events = await eng.execute(job_id="chat", messages=CHAT, max_tokens=12, seed=4)
    assert_well_formed(events, "chat")
    tokens = [e for e in events if e.event == "token"]
    assert events[-1].json() == {
        "tokens": 12,
        "finish_reason": "length",
        "prompt_tokens": count_tokens(CHAT_PROMPT),
        "completion_tokens": len(tokens),
    }
    # Generated as for a prompt: the rendered messages.
    as_prompt = await eng.execute(job_id="p", prompt=CHAT_PROMPT, max_tokens=12, seed=4)
    assert text_of(events) == text_of(as_prompt)
    # An empty or null prompt next to messages is no prompt; unknown fields are ignored.
    extra = [m | {"name": "x"} for m in CHAT]
    for prompt in ("", None):
        again = await eng.execute(
            job_id=f"again-{prompt}", prompt=prompt, messages=extra, max_tokens=12, seed=4,
            presence_penalty=0.5, frequency_penalty=-2, future_field=1,
        )  # fmt: skip
        assert text_of(again) == text_of(events)
    stats = (await eng.client.get(f"{eng.url}/sim/stats", params={"job_id": "chat"})).json()
    run = stats["jobs"]["chat"]["runs"][0]
    assert (run["kind"], run["protocol"], run["outcome"]) == ("chat", "llorch", "completed")
    assert (run["prompt_tokens"], run["completion_tokens"]) == (9, 12)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "messages": CHAT}, "messages"),
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": "hi"}, "messages"),
        ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
        ({"prompt": "x", "frequency_penalty": -3}, "frequency_penalty"),
    ],
)
async def test_execute_needs_exactly_one_of_prompt_and_messages(
    make_engine: Any, body: dict[str, Any], field: str
) -> None:
    eng = await make_engine()
    r = await eng.client.post(f"{eng.url}/execute", json={"job_id": "j", "max_tokens": 1} | body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] in ("INVALID_REQUEST", "INVALID_PARAMETER")
    assert error["message"].startswith(field), error["message"]
    assert eng.engine.stats.jobs_started == 0


async def openai_datas(eng: EngineUnderTest, path: str, **body: Any) -> list[str]:
    async with eng.client.stream(
        "POST", f"{eng.url}{path}", json={"stream": True} | body
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e.data async for e in aiter_sse(response.aiter_text())]


async def test_chat_completions_stream_the_openai_chunk_shape(make_engine: Any) -> None:
    eng = await make_engine(model_ref="m1")
    body = {"messages": CHAT, "max_tokens": 7, "seed": 2, "temperature": 0.7}
    datas = await openai_datas(
        eng, "/v1/chat/completions", stream_options={"include_usage": True}, **body
    )
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {"m1"}
    first, *content, final, usage = chunks
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}
    ]  # fmt: skip
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in content)
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert final["choices"][0]["delta"] == {}
    assert final["choices"][0]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in chunks[:-1])  # as OpenAI, with include_usage
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": count_tokens(CHAT_PROMPT),
        "completion_tokens": len(content),
        "total_tokens": count_tokens(CHAT_PROMPT) + len(content),
    }
    assert len(content) == 7
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    # The same job over the native protocol gives the same text.
    native = await eng.execute(job_id="n", messages=CHAT, max_tokens=7, seed=2)
    assert text_of(native) == text
    # Not streamed: one chat.completion with the same text and usage.
    whole = await eng.client.post(f"{eng.url}/v1/chat/completions", json=body)
    assert whole.status_code == 200
    obj = whole.json()
    assert obj["object"] == "chat.completion"
    assert obj["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert obj["choices"][0]["finish_reason"] == "length"
    assert obj["usage"] == usage["usage"]
    assert whole.headers["x-request-id"] == obj["id"]


async def test_without_include_usage_no_usage_chunk_is_sent(make_engine: Any) -> None:
    eng = await make_engine()
    for path, body in (
        ("/v1/chat/completions", {"messages": CHAT}),
        ("/v1/completions", {"prompt": "hi"}),
    ):
        datas = await openai_datas(eng, path, max_tokens=3, **body)
        chunks = [json.loads(d) for d in datas[:-1]]
        assert datas[-1] == "[DONE]"
        assert all("usage" not in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_completions_include_usage_counts_the_streamed_tokens(make_engine: Any) -> None:
    eng = await make_engine()
    datas = await openai_datas(
        eng, "/v1/completions", prompt="one two three", max_tokens=5,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [json.loads(d) for d in datas[:-1]]
    *tokens, final, usage = chunks
    assert len(tokens) == 5 and all(c["choices"][0]["text"] for c in tokens)
    assert final["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["object"] == "text_completion"
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


async def test_chat_completions_refuse_and_fail_like_completions(make_engine: Any) -> None:
    eng = await make_engine(faults=EngineFaults(refuse=True))
    for path, body in (("/v1/chat/completions", {"messages": CHAT}), ("/v1/completions", {})):
        r = await eng.client.post(f"{eng.url}{path}", json={"prompt": "x"} | body)
        assert r.status_code == 503, path
        assert r.json()["error"]["type"] == "unavailable_error"
    for bad in ({}, {"messages": []}, {"messages": [{"role": "nobody", "content": "x"}]}):
        r = await eng.client.post(f"{eng.url}/v1/chat/completions", json=bad)
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "messages" in r.json()["error"]["message"]
    failing = await make_engine(faults=EngineFaults(error_after_tokens=2))
    datas = await openai_datas(failing, "/v1/chat/completions", messages=CHAT, max_tokens=9)
    assert "[DONE]" not in datas
    assert json.loads(datas[-1])["error"]["type"] == "server_error"
    assert len(datas) == 4  # role chunk, 2 tokens, the error
    stats = (await failing.client.get(f"{failing.url}/sim/stats")).json()
    assert stats["counters"]["failed"] == 1


async def test_chat_content_may_be_text_parts(make_engine: Any) -> None:
    eng = await make_engine()
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name a "},
                                          {"type": "text", "text": "colour."}]}]  # fmt: skip
    r = await eng.client.post(
        f"{eng.url}/v1/chat/completions", json={"messages": parts, "max_tokens": 2}
    )
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == count_tokens(
        render_chat([("user", "Name a colour.")])
    )


# -- /sim/stats: the engine's side of a job ------------------------------------------------


async def stats_of(eng: EngineUnderTest, job_id: str) -> dict[str, Any]:
    body = (await eng.client.get(f"{eng.url}/sim/stats", params={"job_id": job_id})).json()
    job: dict[str, Any] = body["jobs"][job_id]
    return job


async def wait_ended(eng: EngineUnderTest, job_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = await stats_of(eng, job_id)
        if job["ended_at"] is not None:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("tokens_per_s", [0.0, 200.0])
@pytest.mark.parametrize("protocol", ["native", "chat", "completions"])
async def test_sim_stats_records_a_client_disconnect_within_a_second(
    make_engine: Any, tokens_per_s: float, protocol: str
) -> None:
    eng = await make_engine(tokens_per_s=tokens_per_s)
    job_id = f"gone-{protocol}"
    path, body = {
        "native": ("/execute", {"job_id": job_id, "prompt": "x"}),
        "chat": ("/v1/chat/completions", {"messages": CHAT, "stream": True}),
        "completions": ("/v1/completions", {"prompt": "x", "stream": True}),
    }[protocol]
    headers = {"X-Correlation-Id": job_id}  # OpenAI runs are recorded under it
    # A separate client, closed for real: a closed stream of a pooled connection could be
    # kept open for reuse.
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        async with client.stream(
            "POST", f"{eng.url}{path}", json=body | {"max_tokens": 1_000_000}, headers=headers
        ) as response:
            assert response.status_code == 200
            seen = 0
            async for _ in aiter_sse(response.aiter_text()):
                seen += 1
                if seen == 5:
                    break
        closed_at = time.time()
    running = await stats_of(eng, job_id)
    job = await wait_ended(eng, job_id)
    assert job["outcome"] == "disconnected", (running, job)
    assert job["ended_at"] - closed_at < 1.0
    assert job["executions"] == 1 and job["active"] == 0
    run = job["runs"][0]
    assert run["correlation_id"] == job_id
    assert run["protocol"] == ("llorch" if protocol == "native" else "openai")
    assert 0 < run["completion_tokens"] < 1_000_000
    assert eng.engine.stats.active_jobs == 0
    assert eng.engine.stats.jobs_disconnected == 1


async def test_sim_stats_tells_completed_cancelled_and_refused_runs_apart(
    make_engine: Any,
) -> None:
    eng = await make_engine(tokens_per_s=100.0, max_concurrency=2)
    t0 = time.time()
    await eng.execute(job_id="done", prompt="x", max_tokens=2)
    events: list[SseEvent] = []
    body = {"job_id": "stopped", "prompt": "x", "max_tokens": 10_000}
    reader = asyncio.create_task(drain(eng.client, f"{eng.url}/execute", body, events))
    while len(events) < 3:
        await asyncio.sleep(0.01)
    dup = await eng.client.post(f"{eng.url}/execute", json=body)
    assert dup.status_code == 409
    live = (await eng.client.get(f"{eng.url}/sim/stats")).json()
    assert live["jobs"]["stopped"]["outcome"] == "running"
    assert live["jobs"]["stopped"]["ended_at"] is None
    assert live["counters"]["active"] == 1
    await eng.cancel("stopped")
    await asyncio.wait_for(reader, 5)
    stats = (await eng.client.get(f"{eng.url}/sim/stats")).json()
    assert stats["worker_id"] == eng.engine.config.worker_id
    jobs = stats["jobs"]
    assert jobs["done"]["outcome"] == "completed"
    assert jobs["stopped"]["outcome"] == "cancelled"
    assert t0 <= jobs["done"]["started_at"] <= jobs["done"]["ended_at"] <= time.time()
    assert jobs["stopped"]["max_concurrent"] == 1
    c = stats["counters"]
    assert (c["executions"], c["active"], c["completed"], c["cancelled"]) == (2, 0, 1, 1)
    assert c["refused"] == 1 and c["max_concurrent_same_job"] == 1
    # A second run of a finished job id is counted for that id.
    await eng.execute(job_id="done", prompt="x", max_tokens=1)
    again = await stats_of(eng, "done")
    assert again["executions"] == 2 and len(again["runs"]) == 2
    assert again["max_concurrent"] == 1


async def test_a_queued_job_whose_client_leaves_never_runs(make_engine: Any) -> None:
    eng = await make_engine(tokens_per_s=20.0, max_concurrency=1, queue_when_busy=True)
    first = asyncio.create_task(eng.execute(job_id="first", prompt="x", max_tokens=10))
    while eng.engine.stats.active_jobs == 0:
        await asyncio.sleep(0.005)
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        body = {"job_id": "queued", "prompt": "x", "max_tokens": 5}
        async with client.stream("POST", f"{eng.url}/execute", json=body) as response:
            assert response.status_code == 200  # the head goes out at once; then it waits
        closed_at = time.time()
    job = await wait_ended(eng, "queued")
    assert job["outcome"] == "disconnected"
    assert job["ended_at"] - closed_at < 1.0
    assert job["runs"][0]["completion_tokens"] == 0
    assert (await first)[-1].event == "end"
    # A queued job cancelled while it waits ends as cancelled, with started first.
    second = asyncio.create_task(eng.execute(job_id="second", prompt="x", max_tokens=10))
    while eng.engine.stats.active_jobs == 0:
        await asyncio.sleep(0.005)
    waiting = asyncio.create_task(eng.execute(job_id="waiting", prompt="x", max_tokens=5))
    while eng.engine.stats.active_jobs < 2:
        await asyncio.sleep(0.005)
    await eng.cancel("waiting")
    assert [e.event for e in await waiting] == ["started", "error"]
    assert (await stats_of(eng, "waiting"))["outcome"] == "cancelled"
    assert (await second)[-1].event == "end"


# -- the openai SDK reads the engine's answers ---------------------------------------------


async def test_the_openai_sdk_parses_completions_and_chat_completions(make_engine: Any) -> None:
    openai = pytest.importorskip("openai")
    eng = await make_engine(model_ref="m1")
    async with httpx.AsyncClient(trust_env=False) as http_client:
        sdk = openai.AsyncOpenAI(base_url=f"{eng.url}/v1", api_key="none", http_client=http_client)
        chat = await sdk.chat.completions.create(model="m1", messages=CHAT, max_tokens=6, seed=9)
        assert chat.object == "chat.completion"
        assert chat.choices[0].message.role == "assistant"
        assert chat.choices[0].finish_reason == "length"
        assert chat.usage is not None and chat.usage.completion_tokens == 6
        assert chat.usage.prompt_tokens == count_tokens(CHAT_PROMPT)

        stream = await sdk.chat.completions.create(
            model="m1", messages=CHAT, max_tokens=6, seed=9, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        pieces, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(pieces) == chat.choices[0].message.content
        assert finish == "length"
        assert usage is not None and usage.total_tokens == chat.usage.total_tokens

        completion = await sdk.completions.create(model="m1", prompt="hi", max_tokens=4)
        assert completion.object == "text_completion"
        assert completion.usage is not None and completion.usage.completion_tokens == 4
        texts = []
        async for chunk in await sdk.completions.create(
            model="m1", prompt="hi", max_tokens=4, stream=True,
            stream_options={"include_usage": True},
        ):  # fmt: skip
            texts.extend(c.text for c in chunk.choices)
        assert len([t for t in texts if t]) == 4
        await sdk.close()


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


async def test_a_zero_delay_engine_program_streams_as_fast_as_it_can(
    engine_process: Any,
) -> None:
    _, url = engine_process("--ttft-ms", "0", "--tokens-per-s", "0")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        body = {"job_id": "fast", "prompt": "x", "max_tokens": 5000}
        t0 = time.monotonic()
        async with client.stream("POST", f"{url}/execute", json=body) as r:
            events = [e async for e in aiter_sse(r.aiter_text())]
        elapsed = time.monotonic() - t0
        assert events[-1].json()["tokens"] == 5000
        assert elapsed < 10, f"5000 tokens took {elapsed:.1f} s"  # ~0.2 s on a quiet machine
        stats = (await client.get(f"{url}/sim/stats")).json()
        assert stats["jobs"]["fast"]["outcome"] == "completed"


async def test_the_engine_program_prints_its_url_and_serves(engine_process: Any) -> None:
    proc, url = engine_process("--model", "m9", "--tokens-per-s", "0", "--ttft-ms", "0")
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        health = (await client.get(f"{url}/health")).json()
        assert health["model"] == "m9"
        body = {"job_id": "p", "prompt": "x", "max_tokens": 3}
        async with client.stream("POST", f"{url}/execute", json=body) as r:
            events = [e async for e in aiter_sse(r.aiter_text())]
    assert events[-1].json() | {"prompt_tokens": 0} == {
        "tokens": 3,
        "finish_reason": "length",
        "prompt_tokens": 0,
        "completion_tokens": 3,
    }
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
