"""Two simulated pools (real ``llorch-sim pool`` processes) and a real ``orchestratord`` over
loopback HTTP: a pool that stops heartbeating goes offline within interval × threshold, its
jobs that had no token yet move to the other pool, and a job that had relayed tokens fails
WORKER_FAILED (docs/design/http-api.md, *Pools*)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from orchestratord.testing.processes import wait_until

from tests.support.fleet_helpers import Fleet

pytestmark = pytest.mark.timeout(90)

INTERVAL_S, THRESHOLD = 0.3, 3  # FLEET_CONFIG's [heartbeat]
ENGINE = ["--ttft-ms", "5", "--tokens-per-s", "200", "--concurrency", "4"]


def test_a_silent_pool_goes_offline_and_its_jobs_move_to_the_other(tmp_path: Path) -> None:
    with Fleet(tmp_path) as fleet:
        # Pool A alone: the first job gets a worker started there.
        fleet.add_pool("pool-a", "--gpus", "1", "--vram-gb", "24", "--models", "m1:6", *ENGINE)
        warm = fleet.wait_terminal(fleet.submit("m1"))
        assert (warm["status"], warm["pool_id"]) == ("completed", "pool-a")
        fleet.add_pool("pool-b", "--gpus", "1", "--vram-gb", "24", "--models", "m1:6", *ENGINE)
        assert fleet.pool("pool-b")["workers"] == []

        # On A: one job relays two tokens then hangs, three hang before their first token.
        fleet.sim_faults("pool-a", engine_faults={"hang_after_tokens": 2}, apply_to_running=True)
        streamed = fleet.submit("m1", max_tokens=50)
        fleet.wait_job(streamed, lambda j: j["tokens_generated"] == 2, "two tokens")
        fleet.sim_faults("pool-a", engine_faults={"hang_after_tokens": 0}, apply_to_running=True)
        silent = [fleet.submit("m1", max_tokens=5) for _ in range(3)]
        for job_id in silent:
            fleet.wait_job(job_id, lambda j: j["status"] == "running", "running")
            assert fleet.job(job_id)["pool_id"] == "pool-a"
        assert fleet.pool("pool-b")["workers"] == []  # nothing moved yet

        # A stops heartbeating (its process and engines stay up: only the beats stop).
        fleet.sim_faults("pool-a", heartbeat_paused=True)
        paused_at = time.monotonic()
        wait_until(lambda: fleet.pool("pool-a")["status"] == "offline", 10, "pool-a offline")
        silence = time.monotonic() - paused_at
        assert fleet.pool("pool-b")["status"] == "online"

        finals = [fleet.wait_terminal(job_id) for job_id in silent]
        lost = fleet.wait_terminal(streamed)

    # Offline after interval × threshold of silence: not at once (the last beat, sent at
    # most about one interval before the pause, had to age first), and not much later than
    # interval × threshold (slack: the daemon's sweep period, polling, a loaded machine).
    assert INTERVAL_S <= silence <= INTERVAL_S * THRESHOLD + 1.5
    for final in finals:
        assert (final["status"], final["pool_id"], final["attempts"]) == ("completed", "pool-b", 2)
        assert final["tokens_generated"] == 5
    assert lost["status"] == "failed"
    assert lost["error"]["code"] == "WORKER_FAILED"
    assert lost["tokens_generated"] == 2
    assert lost["attempts"] == 1


def test_jobs_are_never_sent_to_an_offline_pool(tmp_path: Path) -> None:
    """With the only pool that holds a worker for m1 offline, a new m1 job gets a worker
    started on the live pool instead of waiting for (or being sent to) the offline one; once
    the silent pool beats again it is online and used again."""
    with Fleet(tmp_path) as fleet:
        fleet.add_pool("pool-a", "--gpus", "1", "--vram-gb", "24", "--models", "m1:6", *ENGINE)
        assert fleet.wait_terminal(fleet.submit("m1"))["pool_id"] == "pool-a"
        fleet.sim_faults("pool-a", heartbeat_paused=True)
        wait_until(lambda: fleet.pool("pool-a")["status"] == "offline", 10, "pool-a offline")
        fleet.add_pool("pool-b", "--gpus", "1", "--vram-gb", "24", "--models", "m1:6", *ENGINE)
        jobs = [fleet.submit("m1", max_tokens=4) for _ in range(3)]
        finals = [fleet.wait_terminal(j) for j in jobs]
        assert {(f["status"], f["pool_id"], f["attempts"]) for f in finals} == {
            ("completed", "pool-b", 1)
        }
        fleet.sim_faults("pool-a", heartbeat_paused=False)
        wait_until(lambda: fleet.pool("pool-a")["status"] == "online", 10, "pool-a back")
