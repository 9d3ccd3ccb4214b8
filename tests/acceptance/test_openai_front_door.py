"""The OpenAI-compatible front door, driven by the official ``openai`` SDK (sync and async)
against a real orchestratord process with simulated engines (``llorch-sim engine``), on
both worker protocols: native (chat through the native extension) and OpenAI (relayed to
the engine's own ``/v1`` routes)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from orchestratord.testing.processes import (
    DaemonProcess,
    EngineProcess,
    HeartbeatingPool,
    wait_until,
)

CONFIG = """
[queue]
capacity = 8
retry_after_s = 1

[heartbeat]
interval_s = 0.5

[[models]]
model_ref = "m1"
aliases = ["model-one"]
context_length = 4096

[[models]]
model_ref = "idle"
context_length = 4096
"""

LAB = """
mode = "lab"

[server]
host = "127.0.0.1"

[auth]
pool_tokens = ["pool-token-0123456789abcdef"]

[[auth.clients]]
token = "client-token-0123456789abcdef"

[[models]]
model_ref = "m1"
context_length = 4096
"""


class Cluster:
    """A daemon, one simulated engine and a stand-in pool registering it."""

    def __init__(self, workdir: Path, protocol: str, *engine_args: str, config: str = CONFIG):
        self.daemon = DaemonProcess(workdir, config)
        self.engine = EngineProcess("m1", worker_id="e0", args=list(engine_args))
        self.protocol = protocol
        self.pool: HeartbeatingPool | None = None
        self.clients: list[openai.OpenAI] = []

    def __enter__(self) -> Cluster:
        self.daemon.start()
        self.engine.start()
        self.pool = HeartbeatingPool(
            self.daemon.url, [self.engine], protocol=self.protocol, interval_s=0.2
        )
        self.pool.__enter__()  # registers, then heartbeats from a thread
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.clients:
            client.close()
        if self.pool is not None:
            self.pool.__exit__(None, None, None)
        self.engine.stop()
        self.daemon.stop()

    def client(self, **kw: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.daemon.url + "/v1", api_key="unused", **kw)
        self.clients.append(client)  # closed with the cluster
        return client

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.daemon.url + "/v1", api_key="unused", **kw)

    def sim_stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.engine.url + "/sim/stats").json()
        return data

    def jobs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = httpx.get(self.daemon.url + "/v2/tasks").json()["items"]
        return items


@pytest.fixture(scope="module", params=["llorch", "openai"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp(f"front-{request.param}")
    with Cluster(workdir, request.param, "--ttft-ms", "5", "--tokens-per-s", "2000") as c:
        yield c


def test_a_completion_with_usage(cluster: Cluster) -> None:
    out = cluster.client().completions.create(model="m1", prompt="Once upon a time", max_tokens=7)
    assert out.object == "text_completion"
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].text
    assert out.usage is not None
    assert out.usage.completion_tokens == 7
    assert out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + 7


def test_a_streamed_completion_ends_with_the_usage_chunk(cluster: Cluster) -> None:
    chunks = list(
        cluster.client().completions.create(
            model="model-one",
            prompt="Count",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_a_chat_answers_through_the_engines_template(cluster: Cluster) -> None:
    out = cluster.client().chat.completions.create(
        model="m1",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say something."},
        ],
        max_tokens=6,
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content
    assert out.usage is not None and out.usage.completion_tokens == 6
    assert out.usage.prompt_tokens > 0
    kinds = {j["job_id"]: j["kind"] for j in cluster.jobs()}
    assert kinds[out.id.removeprefix("chatcmpl-")] == "chat"


async def test_an_async_streamed_chat(cluster: Cluster) -> None:
    client = cluster.async_client()
    stream = await client.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "Hi"}],
        max_completion_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    roles = []
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    await client.close()
    assert roles == ["assistant"]
    assert len(pieces) == 4
    assert usage is not None and usage.completion_tokens == 4


def test_an_unknown_model_is_not_found(cluster: Cluster) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        cluster.client().completions.create(model="no-such-model", prompt="x")
    assert err.value.body["code"] == "MODEL_NOT_FOUND"  # type: ignore[index]


def test_n_2_is_a_bad_request_naming_the_field(cluster: Cluster) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        cluster.client().chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert err.value.body["param"] == "n"  # type: ignore[index]
    assert "n:" in err.value.message


def test_models_lists_the_catalog_and_the_pools_models(cluster: Cluster) -> None:
    models = {m.id: m for m in cluster.client().models.list()}
    assert set(models) == {"m1", "idle"}
    assert models["m1"].model_extra is not None
    assert models["m1"].model_extra["llorch"]["state"] == "loaded"
    assert cluster.client().models.retrieve("model-one").id == "m1"


def test_a_full_queue_is_rate_limited_and_retries_honour_retry_after(cluster: Cluster) -> None:
    # Fill the queue (capacity 8) with jobs of a model no pool serves: they wait.
    url = cluster.daemon.url
    body = {"model": "idle", "prompt": "wait", "max_tokens": 1}
    held = [httpx.post(url + "/v2/tasks", json=body).json()["job_id"] for _ in range(8)]
    try:
        with pytest.raises(openai.RateLimitError) as err:
            cluster.client(max_retries=0).completions.create(model="m1", prompt="x", max_tokens=1)
        assert err.value.response.headers["retry-after"] == "1"
        # Room comes back while the SDK waits Retry-After: its retry succeeds.
        threading.Timer(0.3, lambda: httpx.delete(f"{url}/v2/tasks/{held[0]}")).start()
        started = time.monotonic()
        out = cluster.client(max_retries=2).completions.create(model="m1", prompt="x", max_tokens=1)
        assert out.choices[0].text
        assert time.monotonic() - started >= 0.5  # it did wait
    finally:
        for job_id in held:
            httpx.delete(f"{url}/v2/tasks/{job_id}")


@pytest.mark.parametrize("protocol", ["llorch", "openai"])
def test_a_client_that_disconnects_cancels_its_job_and_the_engines_stream(
    tmp_path: Path, protocol: str
) -> None:
    # A slow engine: the stream is still running when the client leaves.
    with Cluster(tmp_path, protocol, "--ttft-ms", "5", "--tokens-per-s", "20") as c:
        with httpx.stream(
            "POST",
            c.daemon.url + "/v1/completions",
            json={"model": "m1", "prompt": "long", "max_tokens": 500, "stream": True},
            timeout=10,
        ) as r:
            job_id = r.headers["x-job-id"]
            correlation_id = r.headers["x-correlation-id"]
            lines = r.iter_lines()
            while not next(lines).startswith("data: {"):
                pass  # the first token came: the engine is streaming
        left = time.time()

        def cancelled() -> bool:
            job = httpx.get(f"{c.daemon.url}/v2/tasks/{job_id}").json()
            return bool(job["status"] == "cancelled")

        wait_until(cancelled, 5, "the job to be cancelled")
        # The engine records a native job by its id, an OpenAI request by the job's
        # correlation id (the daemon sends it as X-Correlation-Id).
        key = job_id if protocol == "llorch" else correlation_id

        def engine_stopped() -> bool:
            run = c.sim_stats()["jobs"].get(key, {})
            return run.get("ended_at") is not None

        wait_until(engine_stopped, 5, "the engine's stream to end")
        run = c.sim_stats()["jobs"][key]
        assert run["outcome"] in ("cancelled", "disconnected")
        assert run["ended_at"] - left < 1.0, "the engine kept generating for a second or more"


def test_an_interactive_request_overtakes_three_batch_ones(tmp_path: Path) -> None:
    # One single-slot worker kept busy; then three batch requests, then one interactive.
    with Cluster(tmp_path, "llorch", "--ttft-ms", "5", "--tokens-per-s", "50") as c:
        client = c.client(max_retries=0)
        order: list[str] = []

        def call(name: str, tokens: int, how: dict[str, Any]) -> None:
            client.completions.create(model="m1", prompt=name, max_tokens=tokens, **how)
            order.append(name)

        batch = {"extra_body": {"priority": "batch"}}  # what the SDK sends for a body field
        interactive = {"extra_headers": {"X-Priority": "interactive"}}
        busy = threading.Thread(target=call, args=("busy", 150, interactive))  # ~3 s
        busy.start()
        wait_until(lambda: any(j["status"] == "running" for j in c.jobs()), 5, "the busy job")
        threads = []
        for name, how in [("b1", batch), ("b2", batch), ("b3", batch), ("i", interactive)]:
            t = threading.Thread(target=call, args=(name, 2, how))
            t.start()
            threads.append(t)
            admitted = 1 + len(threads)
            wait_until(lambda n=admitted: len(c.jobs()) == n, 5, "the request's job")
        for t in [busy, *threads]:
            t.join(30)
        assert order[0] == "busy"
        assert order[1] == "i", order


def test_lab_mode_without_a_token_is_an_authentication_error(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, LAB)
    with (
        d.start(),
        openai.OpenAI(base_url=d.url + "/v1", api_key="wrong-token") as bad,
        openai.OpenAI(base_url=d.url + "/v1", api_key="client-token-0123456789abcdef") as good,
    ):
        with pytest.raises(openai.AuthenticationError) as err:
            bad.models.list()
        assert err.value.body["code"] == "UNAUTHORIZED"  # type: ignore[index]
        assert [m.id for m in good.models.list()] == ["m1"]


def test_async_clients_in_parallel(cluster: Cluster) -> None:
    async def many() -> list[str]:
        client = cluster.async_client()
        outs = await asyncio.gather(
            *(client.completions.create(model="m1", prompt=f"p{i}", max_tokens=3) for i in range(6))
        )
        await client.close()
        return [o.choices[0].finish_reason for o in outs]

    assert asyncio.run(many()) == ["length"] * 6
