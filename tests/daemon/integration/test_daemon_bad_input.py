"""Bad input found while measuring the front door (issue 12): clear 400s, never a 500."""

from __future__ import annotations

import pytest
from orchestratord import MemoryStore, create_app
from orchestratord.cli import _parser
from orchestratord.testing import make_config, running_app

DEEP = b"[" * 5000 + b"]" * 5000  # 10 kB, far under the body limit
DEEP_FIELD = b'{"model": ' + DEEP + b"}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/tasks"),
        ("POST", "/v2/pools/register"),
        ("POST", "/v2/pools/p1/heartbeat"),
        ("PUT", "/v2/scheduler"),
    ],
)
@pytest.mark.parametrize("body", [DEEP, DEEP_FIELD], ids=["deep-array", "deep-field"])
async def test_json_nested_5000_levels_deep_is_invalid_request(
    method: str, path: str, body: bytes
) -> None:
    app = create_app(make_config(), store=MemoryStore())
    async with running_app(app) as client:
        r = await client.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert error["message"] == "body: JSON nested too deeply"


@pytest.mark.parametrize("given", ["warning", "Warning", "WARNING"])
def test_the_log_level_flag_takes_any_case(given: str) -> None:
    assert _parser().parse_args(["--log-level", given]).log_level == "WARNING"
