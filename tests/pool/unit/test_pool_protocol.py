"""The worker protocol shares the core's definitions: sampling field types and defaults,
validation messages, TOML reading; and the agent's API has one error boundary."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from llorch_pool.agent import PoolAgentConfig
from llorch_pool.agent.app import create_pool_app
from llorch_pool.protocol import ExecuteRequest, PoolInventory
from llorch_pool.sim.engine import OpenAiCompletionRequest
from orchestrator_core import JobParams, RequestInvalid, TaskSubmitRequest
from orchestrator_core.api import field_errors, request_invalid
from orchestrator_core.errors import ConfigInvalid, ErrorCode

SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed")


def test_execute_request_has_the_sampling_defaults_and_limits_of_a_submission() -> None:
    execute = ExecuteRequest(job_id="j", prompt="p", max_tokens=3)
    task = TaskSubmitRequest(model="m", prompt="p", max_tokens=3)
    assert execute.job_params() == JobParams.from_mapping(task.model_dump()) == JobParams(3)
    for name in SAMPLING:
        mine = ExecuteRequest.model_json_schema()["properties"][name]
        theirs = TaskSubmitRequest.model_json_schema()["properties"][name]
        assert mine == theirs, name


def test_execute_request_job_params_round_trip() -> None:
    params = JobParams(7, 0.2, 0.9, 40, 1.1, ("\n", "END"), 42)
    body = {"job_id": "j", "prompt": "p", **params.to_dict()}
    assert body["stop"] == ["\n", "END"]
    assert ExecuteRequest.parse(body).job_params() == params
    assert JobParams.from_mapping({"max_tokens": 2, "unrelated": 1, "stop": None}) == JobParams(2)


def test_execute_request_errors_name_the_field_like_a_submission() -> None:
    with pytest.raises(RequestInvalid) as mine:
        ExecuteRequest.parse({"job_id": "j", "prompt": "p", "max_tokens": 1, "temperature": 5})
    with pytest.raises(RequestInvalid) as theirs:
        TaskSubmitRequest.parse({"model": "m", "prompt": "p", "max_tokens": 1, "temperature": 5})
    assert (
        mine.value.message
        == theirs.value.message
        == ("temperature: must be between 0.0 and 2.0, got 5")
    )


def test_openai_requests_become_job_params() -> None:
    req = OpenAiCompletionRequest.parse({"prompt": ["a", "b"], "stop": "x", "seed": 3})
    assert req.job_params() == JobParams(16, temperature=1.0, stop=("x",), seed=3)
    with pytest.raises(RequestInvalid, match="prompt: is required"):
        OpenAiCompletionRequest.parse({"max_tokens": 1})


GOOD = """
pool_id = "p"
orchestrator_url = "http://127.0.0.1:8080"
gpu_detection = "config"
"""


def test_pool_config_problems_are_worded_like_the_daemon_config() -> None:
    with pytest.raises(ConfigInvalid) as info:
        PoolAgentConfig.from_toml(GOOD + "pool_id = 1\n", source="pool.toml", env={})
    assert info.value.problems[0].startswith("malformed TOML: ")
    assert "line 5" in info.value.problems[0]
    assert info.value.message.startswith("pool.toml: ")
    twice = GOOD + '[[gpus]]\ngpu_id = "0"\nvram_gb = 1\n[[gpus]]\ngpu_id = "0"\nvram_gb = 1\n'
    with pytest.raises(ConfigInvalid) as info:
        PoolAgentConfig.from_toml(twice, env={})
    assert info.value.problems == ["gpus: gpu_id values must be unique"]


class _Host:
    """The smallest :class:`~llorch_pool.agent.app.PoolApiHost`."""

    pool_id = "p"
    link = None

    def __init__(self, api_token: str | None) -> None:
        self.api_token = api_token
        self.workers: Any = None

    @property
    def accepted_tokens(self) -> tuple[str, ...]:
        return (self.api_token,) if self.api_token else ()

    def inventory(self) -> PoolInventory:
        return PoolInventory(pool_id="p", endpoint="http://p", sent_at=1.0)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, ErrorCode.UNAUTHORIZED),
        ({"Authorization": "Bearer nope"}, 403, ErrorCode.FORBIDDEN),
        ({"Authorization": "Bearer key"}, 200, None),
    ],
)
async def test_every_api_route_goes_through_one_auth_and_error_boundary(
    headers: dict[str, str], status: int, code: ErrorCode | None
) -> None:
    app = create_pool_app(_Host("key"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pool") as client:
        sent = {**headers, "X-Correlation-Id": "cid-1"}
        r = await client.get("/v2/inventory", headers=sent)
        assert r.status_code == status
        assert r.headers["X-Correlation-Id"] == "cid-1"
        if code is not None:
            assert r.json()["error"]["code"] == code
            assert r.json()["error"]["correlation_id"] == "cid-1"
            for path in ("/v2/workers/start", "/v2/workers/stop"):
                refused = await client.post(path, headers=sent, json={})
                assert refused.status_code == status
        else:
            bad = await client.post("/v2/workers/start", headers=sent, content=b"{nope")
            assert bad.status_code == 400
            assert bad.json()["error"]["code"] == ErrorCode.INVALID_REQUEST
            assert bad.headers["X-Correlation-Id"] == "cid-1"
        assert (await client.get("/health")).status_code == 200


def test_field_errors_of_raw_error_lists_skip_locations_and_name_the_root() -> None:
    """The form the daemon's query parameters need (FastAPI's ``errors()``, no model)."""
    raw = [
        {"type": "greater_than_equal", "loc": ("query", "limit"), "msg": "x", "input": "0",
         "ctx": {"ge": 1}},
        {"type": "int_parsing", "loc": ("query", "limit"), "msg": "x", "input": "a"},
        {"type": "missing", "loc": ("query",), "msg": "x", "input": None},
    ]  # fmt: skip
    found = field_errors(raw, skip_loc=("query", "header", "path"), root="query")
    assert [(e.field, e.code, e.message) for e in found] == [
        ("limit", ErrorCode.INVALID_PARAMETER, "limit: must be >= 1, got '0'"),
        ("limit", ErrorCode.INVALID_PARAMETER, "limit: must be an integer, got 'a'"),
        ("query", ErrorCode.INVALID_REQUEST, "query: is required"),
    ]
    invalid = request_invalid(raw[:1], skip_loc=("query",))
    assert invalid.code == ErrorCode.INVALID_PARAMETER and invalid.errors == found[:1]
