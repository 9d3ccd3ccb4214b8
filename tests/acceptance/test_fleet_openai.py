"""The daemon driving OpenAI-compatible engines end to end: a real ``orchestratord`` and a
simulated pool whose engines speak ``/v1/completions`` (``llorch-sim pool --protocol
openai``). A cancel closes the engine's stream at once; an engine that refuses before the
first token makes the job retry; a stream cut after tokens fails the job WORKER_FAILED."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from orchestratord.testing.processes import wait_until

from tests.support.fleet_helpers import Fleet

pytestmark = pytest.mark.timeout(90)

POOL = [
    "--gpus",
    "1",
    "--vram-gb",
    "24",
    "--models",
    "m1:6",
    "--protocol",
    "openai",
    "--ttft-ms",
    "5",
    "--tokens-per-s",
    "100",
]


def engine_active_jobs(fleet: Fleet) -> int:
    """Jobs the pool's engines are generating (from the engines' own /health)."""
    total = 0
    for w in fleet.inventory("oa")["workers"]:
        total += int(httpx.get(w["uri"] + "/health", timeout=5).json()["active_jobs"])
    return total


def test_openai_engines_cancel_retry_and_fail_like_native_workers(tmp_path: Path) -> None:
    with Fleet(tmp_path) as fleet:
        fleet.add_pool("oa", *POOL)
        ok = fleet.wait_terminal(fleet.submit("m1"))
        assert (ok["status"], ok["tokens_generated"]) == ("completed", 8)
        assert [w["protocol"] for w in fleet.inventory("oa")["workers"]] == ["openai"]

        # Cancel while streaming: the job ends at once and the engine stops generating.
        long_job = fleet.submit("m1", max_tokens=1000)  # 10 s at 100 tokens/s
        fleet.wait_job(long_job, lambda j: j["tokens_generated"] >= 3, "tokens flowing")
        t0 = time.monotonic()
        r = fleet.http.delete(f"{fleet.url}/v2/tasks/{long_job}")
        assert r.status_code == 200
        cancelled = fleet.wait_terminal(long_job)
        assert time.monotonic() - t0 < 2.0
        assert (cancelled["status"], cancelled["error"]["code"]) == ("cancelled", "CANCELLED")
        wait_until(lambda: engine_active_jobs(fleet) == 0, 5, "the engine to drop the job")

        # An engine that refuses (503) before the first token: retried until attempts run out.
        fleet.sim_faults("oa", engine_faults={"refuse": True}, apply_to_running=True)
        refused = fleet.wait_terminal(fleet.submit("m1"))
        assert (refused["status"], refused["error"]["code"]) == ("failed", "DISPATCH_FAILED")
        assert refused["attempts"] == 3  # FLEET_CONFIG's retry.max_attempts

        # A stream cut after tokens: no retry (tokens were relayed), WORKER_FAILED.
        fleet.sim_faults(
            "oa",
            engine_faults={"refuse": False, "crash_after_tokens": 3},
            apply_to_running=True,
        )
        cut = fleet.wait_terminal(fleet.submit("m1", max_tokens=10))
        assert (cut["status"], cut["error"]["code"]) == ("failed", "WORKER_FAILED")
        assert (cut["tokens_generated"], cut["attempts"]) == (3, 1)
