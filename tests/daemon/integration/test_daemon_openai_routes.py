"""The /v1 routes in process: OpenAI-shaped refusals that need no engine."""

from __future__ import annotations

from orchestratord import MemoryStore, create_app
from orchestratord.testing import (
    RecordingPoolAgentClient,
    ScriptedWorkerClient,
    make_config,
    pool_registration,
    running_app,
)

CHAT = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_a_model_that_cannot_serve_chat_is_a_400_naming_the_model() -> None:
    config = make_config(
        models=[{"model_ref": "base", "context_length": 2048, "chat": False}],
    )
    app = create_app(
        config,
        store=MemoryStore(),
        worker_client=ScriptedWorkerClient(),
        pool_client=RecordingPoolAgentClient(),
    )
    async with running_app(app) as client:
        await client.post("/v2/pools/register", json=pool_registration(model="base"))
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "model"
        assert r.json()["error"]["code"] == "INVALID_PARAMETER"
        assert "does not serve chat" in r.json()["error"]["message"]
        done = await client.post(
            "/v1/completions", json={"model": "base", "prompt": "hi", "max_tokens": 2}
        )
        assert done.status_code == 200, done.text
        assert done.json()["choices"][0]["text"]


async def test_a_bad_priority_header_is_a_400_naming_it() -> None:
    app = create_app(make_config(), store=MemoryStore())
    async with running_app(app) as client:
        r = await client.post(
            "/v1/completions",
            json={"model": "m1", "prompt": "hi"},
            headers={"X-Priority": "urgent"},
        )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "X-Priority"
