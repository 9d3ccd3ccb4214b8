"""`llorch pools list|show` through CliRunner against the fake daemon (httpx.MockTransport)."""

from __future__ import annotations

import io
import json

import pytest
from llorch.exitcodes import ExitCode
from llorch.output import Output
from llorch.render import render_pool, vram_bar
from orchestrator_core import PoolInfo

from tests.support.llorch_fake import FakeOrchestratord, invoke


@pytest.fixture
def fake() -> FakeOrchestratord:
    fake = FakeOrchestratord()
    fake.add_pool("pool-a")
    fake.add_pool(
        "pool-b",
        status="degraded",
        gpus=[
            {"gpu_id": "g0", "name": "A100", "vram_total_bytes": 80 * 2**30,
             "vram_free_bytes": 4 * 2**30},
            {"gpu_id": "g1", "name": "A100", "vram_total_bytes": 80 * 2**30,
             "vram_free_bytes": 80 * 2**30},
        ],
        workers=[
            {"worker_id": "w1", "model_ref": "llama-70b", "gpu_ids": ["g0"], "status": "busy",
             "current_job_id": "job-9", "active_jobs": 1},
            {"worker_id": "w2", "model_ref": "qwen-7b", "gpu_ids": ["g1"], "status": "starting"},
        ],
    )  # fmt: skip
    return fake


def test_pools_list_shows_status_vram_and_workers(fake):
    result = invoke(fake, "pools", "list")
    assert result.exit_code == 0
    header, *rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert header == ["POOL", "STATUS", "ENDPOINT", "GPUS", "VRAM USED", "WORKERS", "HEARTBEAT"]
    by_pool = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert by_pool["pool-a"]["STATUS"] == "online"
    assert by_pool["pool-a"]["VRAM USED"] == "16.0/24.0 GiB"
    assert by_pool["pool-a"]["HEARTBEAT"] == "2s"
    assert by_pool["pool-b"]["STATUS"] == "degraded"
    assert by_pool["pool-b"]["GPUS"] == "2"
    assert by_pool["pool-b"]["VRAM USED"] == "76.0/160.0 GiB"
    assert by_pool["pool-b"]["WORKERS"] == "1 busy, 1 starting"


def test_pools_list_json_round_trips(fake):
    parsed = json.loads(invoke(fake, "pools", "list", "--json").stdout)
    pools = [PoolInfo.model_validate(p) for p in parsed["pools"]]
    assert [p.pool_id for p in pools] == ["pool-a", "pool-b"]
    assert pools[1].workers[0].current_job_id == "job-9"


def test_pools_list_with_no_pools():
    result = invoke(FakeOrchestratord(), "pools", "list")
    assert result.exit_code == 0
    assert "no pools registered" in result.stderr


def test_pools_show_lists_gpus_and_workers(fake):
    result = invoke(fake, "pools", "show", "pool-b")
    assert result.exit_code == 0
    out = result.stdout
    assert "status\tdegraded" in out
    assert "g0\tA100\t76.0/80.0 GiB\t4.0\t0%" in out
    assert "w1\tllama-70b\tbusy\tg0\tjob-9\t1/1" in out
    assert "w2\tqwen-7b\tstarting\tg1\t-" in out
    parsed = json.loads(invoke(fake, "pools", "show", "pool-b", "--json").stdout)
    assert parsed["pool_id"] == "pool-b"
    assert len(parsed["gpus"]) == 2


def test_pools_show_unknown_pool_exits_4(fake):
    result = invoke(fake, "pools", "show", "nope")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "POOL_NOT_FOUND: pool nope not found" in result.stderr


def test_unknown_fields_from_a_newer_daemon_are_ignored(fake):
    fake.pools[0]["zone"] = "eu-west"
    fake.pools[0]["gpus"][0]["temperature_c"] = 61
    result = invoke(fake, "pools", "show", "pool-a")
    assert result.exit_code == 0, result.stderr


def test_a_malformed_pool_reply_exits_5_naming_the_field(fake):
    del fake.pools[0]["endpoint"]
    result = invoke(fake, "pools", "show", "pool-a")
    assert result.exit_code == ExitCode.SERVER_ERROR
    assert "unexpected answer to GET /v2/pools/pool-a: endpoint: is required" in result.stderr


def test_vram_bars_on_a_terminal(fake):
    bar = vram_bar(18 * 2**30, 24 * 2**30, width=20)
    assert bar.plain == "███████████████░░░░░ 18.0/24.0 GiB  75%"
    assert bar.style == "yellow"
    assert vram_bar(23, 24).style == "red"
    assert vram_bar(1, 24).style == "green"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    out = Output(json_mode=False, env={}, stdout=stream, stderr=io.StringIO())
    render_pool(out, PoolInfo.model_validate(fake.pools[1]), fake.now)
    text = stream.getvalue()
    assert "█" in text and "\x1b[" in text, "bars and colour on a terminal"
    assert "llama-70b" in text
