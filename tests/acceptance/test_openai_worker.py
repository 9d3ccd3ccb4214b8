"""The daemon's OpenAI-compatible worker client against a real ``llorch-sim engine`` process
(its ``/v1/completions`` endpoint) over loopback HTTP: event mapping, finish reasons,
cancellation by closing the stream, faults mapped to the retry rules' errors, and the
protocol-routing client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from llorch_pool.serving import serve_app
from orchestratord import (
    ExecuteRequest,
    NativeWorkerClient,
    OpenAIWorkerClient,
    ProtocolRoutingWorkerClient,
    WorkerEvent,
    WorkerLost,
    WorkerUnreachable,
)
from orchestratord.openai_workers import normalise_finish_reason
from orchestratord.testing import ScriptedWorkerClient
from orchestratord.testing.processes import EngineProcess, free_port, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.support.worker_events import flatten_tokens

pytestmark = pytest.mark.timeout(60)

NO_FAULTS = {
    "crash_after_tokens": None,
    "hang_after_tokens": None,
    "error_after_tokens": None,
    "refuse": False,
}


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    """One simulated engine process for the module (200 tokens/s, 5 ms to the first token)."""
    with EngineProcess("m1", worker_id="w1", args=["--ttft-ms", "5", "--tokens-per-s", "200"]) as e:
        yield e


@pytest.fixture
def faults(engine: EngineProcess) -> Iterator[Any]:
    """Set engine faults for one test; they are cleared afterwards."""

    def set_faults(**values: Any) -> None:
        httpx.post(engine.url + "/sim/faults", json=values, timeout=5).raise_for_status()

    yield set_faults
    set_faults(**NO_FAULTS)


@pytest.fixture
async def client() -> AsyncIterator[OpenAIWorkerClient]:
    c = OpenAIWorkerClient(read_timeout_s=10)
    yield c
    await c.aclose()


def request(job_id: str = "j1", **fields: Any) -> ExecuteRequest:
    values: dict[str, Any] = {
        "job_id": job_id,
        "prompt": "Tell me a story",
        "max_tokens": 8,
        "temperature": 0.0,
        "seed": 7,
        "model": "m1",
        "protocol": "openai",
    }
    return ExecuteRequest(**(values | fields))


async def run(client: Any, uri: str, req: ExecuteRequest) -> list[WorkerEvent]:
    """The job's events, a ``tokens`` batch counted as its tokens."""
    return flatten_tokens([ev async for ev in client.execute(uri, req, correlation_id="c-1")])


def kinds(events: list[WorkerEvent]) -> list[str]:
    return [e.kind for e in events]


async def test_a_completion_maps_to_started_tokens_metrics_end(
    client: OpenAIWorkerClient, engine: EngineProcess
) -> None:
    events = await run(client, engine.url, request(max_tokens=8))
    assert kinds(events) == ["started"] + ["token"] * 8 + ["metrics", "end"]
    assert [e.data["i"] for e in events if e.kind == "token"] == list(range(8))
    assert all(e.data["t"] for e in events if e.kind == "token")
    metrics = events[-2].data
    assert metrics["tokens"] == 8
    assert metrics["usage"]["completion_tokens"] == 8
    assert metrics["ttft_ms"] is not None
    # the engine's own usage reaches the end event: /v1 answers report it
    prompt_tokens = metrics["usage"]["prompt_tokens"]
    assert events[-1].data == {
        "tokens": 8,
        "finish_reason": "length",
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 8,
    }


async def test_the_text_is_the_same_as_over_the_native_protocol(
    client: OpenAIWorkerClient, engine: EngineProcess
) -> None:
    """Same prompt, seed and sampling → the simulator generates the same text on both
    protocols, so nothing is lost or reordered by the mapping."""
    native = NativeWorkerClient(read_timeout_s=10)
    try:
        ours = await run(client, engine.url, request("j-openai", max_tokens=12))
        theirs = await run(native, engine.url, request("j-native", max_tokens=12))
    finally:
        await native.aclose()
    text = "".join(e.data["t"] for e in ours if e.kind == "token")
    assert text == "".join(e.data["t"] for e in theirs if e.kind == "token")
    assert text


async def test_a_stop_string_ends_with_finish_reason_stop(
    client: OpenAIWorkerClient, engine: EngineProcess
) -> None:
    full = await run(client, engine.url, request("j-full", max_tokens=20))
    words = [e.data["t"] for e in full if e.kind == "token"]
    stop = words[5].strip()
    assert stop
    events = await run(client, engine.url, request("j-stop", max_tokens=20, stop=(stop,)))
    assert events[-1].kind == "end"
    assert events[-1].data["finish_reason"] == "stop"
    text = "".join(e.data["t"] for e in events if e.kind == "token")
    assert stop not in text
    assert len([e for e in events if e.kind == "token"]) < 20


async def test_cancel_closes_the_stream_and_ends_with_cancelled(
    client: OpenAIWorkerClient, engine: EngineProcess
) -> None:
    events: list[WorkerEvent] = []
    t0 = time.monotonic()
    async for ev in client.execute(
        engine.url, request("j-cancel", max_tokens=2000), correlation_id="c"
    ):
        events.append(ev)
        if len(events) == 4:  # started + 3 tokens
            await client.cancel(engine.url, "j-cancel", correlation_id="c")
    assert time.monotonic() - t0 < 3.0  # 2000 tokens at 200/s would take 10 s
    assert events[-1] == WorkerEvent("error", {"code": "CANCELLED", "message": "cancelled"})
    assert kinds(flatten_tokens(events)).count("token") >= 3
    # The engine saw the connection close and stopped generating.
    wait_until(
        lambda: httpx.get(engine.url + "/health").json()["active_jobs"] == 0,
        5,
        "the engine to drop the cancelled job",
    )
    await client.cancel(engine.url, "j-cancel", correlation_id="c")  # idempotent


async def test_a_cancel_before_execute_cancels_the_job_when_it_starts(
    client: OpenAIWorkerClient, engine: EngineProcess
) -> None:
    await client.cancel(engine.url, "j-early", correlation_id="c")
    events = await run(client, engine.url, request("j-early"))
    assert events == [WorkerEvent("error", {"code": "CANCELLED", "message": "cancelled"})]


async def test_an_engine_that_refuses_is_unreachable_so_the_job_is_retried(
    client: OpenAIWorkerClient, engine: EngineProcess, faults: Any
) -> None:
    faults(refuse=True)
    with pytest.raises(WorkerUnreachable, match="503"):
        await run(client, engine.url, request("j-refused"))


async def test_nothing_listening_is_unreachable(client: OpenAIWorkerClient) -> None:
    with pytest.raises(WorkerUnreachable, match="cannot reach"):
        await run(client, f"http://127.0.0.1:{free_port()}", request("j-nobody"))


async def test_a_crash_before_the_first_token_is_unreachable(
    client: OpenAIWorkerClient, engine: EngineProcess, faults: Any
) -> None:
    faults(crash_after_tokens=0)
    with pytest.raises(WorkerUnreachable):
        await run(client, engine.url, request("j-crash0"))


async def test_a_crash_after_tokens_is_a_lost_worker(
    client: OpenAIWorkerClient, engine: EngineProcess, faults: Any
) -> None:
    faults(crash_after_tokens=3)
    events: list[WorkerEvent] = []

    async def collect() -> None:
        async for ev in client.execute(engine.url, request("j-crash3"), correlation_id="c"):
            events.append(ev)

    with pytest.raises(WorkerLost):
        await collect()
    assert kinds(flatten_tokens(events)) == ["started", "token", "token", "token"]


async def test_an_engine_error_mid_stream_is_a_worker_failure(
    client: OpenAIWorkerClient, engine: EngineProcess, faults: Any
) -> None:
    faults(error_after_tokens=2)
    events = await run(client, engine.url, request("j-err"))
    assert kinds(events) == ["started", "token", "token", "error"]
    assert events[-1].data["code"] == "WORKER_FAILED"


async def test_a_request_the_engine_rejects_fails_with_a_stable_code(
    client: OpenAIWorkerClient, engine: EngineProcess
) -> None:
    events = await run(client, engine.url, request("j-bad", max_tokens=0))
    assert kinds(events) == ["error"]
    assert events[0].data["code"] == "INVALID_PARAMETER"
    assert "max_tokens" in events[0].data["message"]


def test_context_refusals_and_finish_reasons_map_to_stable_words() -> None:
    too_long = b'{"error": {"message": "This model\'s maximum context length is 2048 tokens"}}'
    refusal = OpenAIWorkerClient._refusal(400, too_long)
    assert isinstance(refusal, WorkerEvent)
    assert refusal.data["code"] == "CONTEXT_TOO_LARGE"
    assert isinstance(OpenAIWorkerClient._refusal(429, b"slow down"), WorkerUnreachable)
    assert isinstance(OpenAIWorkerClient._refusal(500, b"{}"), WorkerUnreachable)
    assert [normalise_finish_reason(r) for r in ("stop", "eos", "length", "max_tokens")] == [
        "stop",
        "stop",
        "length",
        "length",
    ]
    assert normalise_finish_reason(None) == "stop"


def test_the_body_carries_the_jobs_parameters() -> None:
    body = OpenAIWorkerClient.body(
        request(stop=("\n",), top_k=40, repetition_penalty=1.2, seed=None)
    )
    assert body["model"] == "m1"
    assert body["stream"] is True
    assert body["stop"] == ["\n"]
    assert body["top_k"] == 40
    assert body["repeat_penalty"] == body["repetition_penalty"] == 1.2
    assert "seed" not in body
    assert "top_k" not in OpenAIWorkerClient.body(request())


async def test_the_routing_client_picks_the_client_of_the_workers_protocol() -> None:
    native, openai = ScriptedWorkerClient(), ScriptedWorkerClient()
    router = ProtocolRoutingWorkerClient({"llorch": native, "openai": openai})
    await run(router, "http://w-native", request("a", protocol="llorch"))
    await run(router, "http://w-openai", request("b", protocol="openai"))
    await run(router, "http://w-other", request("c", protocol="grpc"))  # unknown: default
    assert [uri for uri, _ in native.calls] == ["http://w-native", "http://w-other"]
    assert [uri for uri, _ in openai.calls] == ["http://w-openai"]
    # A cancel goes where the job ran; an unknown job by the URI's last protocol.
    await router.cancel("http://w-openai", "zzz", correlation_id="c")
    assert openai.cancels == [("http://w-openai", "zzz")]
    await router.cancel("http://never-seen", "yyy", correlation_id="c")
    assert native.cancels == [("http://never-seen", "yyy")]
    with pytest.raises(ValueError, match="default"):
        ProtocolRoutingWorkerClient({"openai": openai})


async def test_the_routing_client_drives_a_real_engine_on_both_protocols(
    engine: EngineProcess,
) -> None:
    router = ProtocolRoutingWorkerClient(
        {"llorch": NativeWorkerClient(), "openai": OpenAIWorkerClient()}
    )
    try:
        a = await run(router, engine.url, request("r-native", protocol="llorch"))
        b = await run(router, engine.url, request("r-openai", protocol="openai"))
    finally:
        await router.aclose()
    assert a[-1].kind == b[-1].kind == "end"
    assert "engine_request_id" in b[0].data  # the OpenAI path's started event
    assert "engine_request_id" not in a[0].data


async def test_done_without_a_finish_reason_is_an_interrupted_stream(
    client: OpenAIWorkerClient,
) -> None:
    """llama-cpp-python cuts a generation with a bare ``[DONE]`` when another request takes
    its model lock: that is not a completed job."""
    chunks: list[str] = []

    async def completions(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            for text in chunks:
                yield "data: " + json.dumps({"choices": [{"text": text, "finish_reason": None}]})
                yield "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
    server = await serve_app(app)
    try:
        chunks[:] = ["a", "b"]
        events: list[WorkerEvent] = []

        async def collect() -> None:
            async for ev in client.execute(server.url, request("j-cut"), correlation_id="c"):
                events.append(ev)

        with pytest.raises(WorkerLost, match="finish_reason"):
            await collect()
        assert kinds(flatten_tokens(events)) == ["started", "token", "token"]
        chunks[:] = []
        with pytest.raises(WorkerUnreachable, match="finish_reason"):
            await run(client, server.url, request("j-cut0"))
    finally:
        await server.stop()
