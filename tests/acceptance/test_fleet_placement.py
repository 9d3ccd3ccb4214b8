"""Model placement with real processes: a real ``orchestratord`` drives a simulated pool
(``llorch-sim pool``) over its agent API. A model loaded nowhere gets a worker started; when
VRAM is short an idle worker is evicted to make room; a busy worker is never evicted (the
waiting model gets its turn once the job ends); a model no pool could ever fit fails with
NO_CAPACITY. The pool's engines speak the OpenAI-compatible protocol, so every job also goes
through the daemon's OpenAI worker client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.fleet_helpers import Fleet

pytestmark = pytest.mark.timeout(90)

# One 10 GB GPU: m1 and m2 (6 GB each) cannot be loaded together; big (40 GB) never fits.
POOL = [
    "--gpus",
    "1",
    "--vram-gb",
    "10",
    "--models",
    "m1:6,m2:6,big:40",
    "--protocol",
    "openai",
    "--ttft-ms",
    "5",
    "--tokens-per-s",
    "100",
]


def workers(fleet: Fleet) -> list[tuple[str, str]]:
    """(model, protocol) of the pool's live workers, from its own inventory."""
    inv = fleet.inventory("gpu-box")
    return sorted((w["model_ref"], w["protocol"]) for w in inv["workers"])


CATALOG = """
[[models]]
model_ref = "m1"
vram_bytes = 6_000_000_000

[[models]]
model_ref = "m2"
vram_bytes = 6_000_000_000
"""


@pytest.mark.parametrize("catalog", [False, True], ids=["vram-from-pool", "vram-in-catalog"])
def test_workers_are_started_evicted_when_idle_and_never_when_busy(
    tmp_path: Path, catalog: bool
) -> None:
    """The models' VRAM comes from the daemon's catalog or, without it, from the pool's
    registration (what its launch configs need): either way no start is ever refused — a
    start waits for the eviction that makes its room."""
    with Fleet(tmp_path, CATALOG if catalog else "") as fleet:
        fleet.add_pool("gpu-box", *POOL)
        assert workers(fleet) == []

        # m1 is loaded nowhere: a worker is started for it.
        first = fleet.wait_terminal(fleet.submit("m1"))
        assert (first["status"], first["tokens_generated"]) == ("completed", 8)
        assert workers(fleet) == [("m1", "openai")]
        assert fleet.metric("worker_starts_total", outcome="ok") == 1
        assert fleet.metric("worker_evictions_total") == 0

        # m2 does not fit next to m1: the idle m1 worker is evicted to make room.
        second = fleet.wait_terminal(fleet.submit("m2"))
        assert (second["status"], second["tokens_generated"]) == ("completed", 8)
        assert workers(fleet) == [("m2", "openai")]
        assert fleet.metric("worker_starts_total", outcome="ok") == 2
        assert fleet.metric("worker_evictions_total") == 1

        # A long m1 job (evicting the idle m2 once more) is running when an m2 job arrives:
        # its worker is busy, so m2 waits instead of evicting it.
        long_job = fleet.submit("m1", max_tokens=80)  # 0.8 s at 100 tokens/s
        fleet.wait_job(long_job, lambda j: j["tokens_generated"] >= 5, "tokens flowing")
        waiting = fleet.submit("m2", max_tokens=4)
        seen: list[dict[str, Any]] = []
        long_final = fleet.wait_job(
            long_job, lambda j: seen.append(fleet.job(waiting)) or j["status"] != "running", "end"
        )
        waiting_final = fleet.wait_terminal(waiting)
        refused = fleet.metric("worker_starts_total") - fleet.metric(
            "worker_starts_total", outcome="ok"
        )
        assert fleet.metric("worker_starts_total", outcome="ok") == 4
        assert fleet.metric("worker_evictions_total") == 3

    assert (long_final["status"], long_final["tokens_generated"]) == ("completed", 80)
    assert long_final["attempts"] == 1
    assert all(s["status"] == "queued" for s in seen[:-1])  # m2 waited the whole time
    assert waiting_final["status"] == "completed"
    assert waiting_final["started_at"] >= long_final["finished_at"]
    assert refused == 0


@pytest.mark.parametrize("catalog", [False, True], ids=["vram-from-pool", "vram-in-catalog"])
def test_a_model_no_pool_can_ever_fit_fails_with_no_capacity(tmp_path: Path, catalog: bool) -> None:
    """With the model's VRAM in the daemon's catalog, or in the pool's registration, the job
    is rejected without asking the pool to start anything."""
    extra = '[[models]]\nmodel_ref = "big"\nvram_bytes = 40_000_000_000\n' if catalog else ""
    with Fleet(tmp_path, extra) as fleet:
        fleet.add_pool("gpu-box", *POOL)
        final = fleet.wait_terminal(fleet.submit("big"), timeout_s=10)
        assert final["status"] == "failed"
        assert final["error"]["code"] == "NO_CAPACITY"
        assert workers(fleet) == []
        assert fleet.metric("worker_starts_total", outcome="ok") == 0
        refused = fleet.metric("worker_starts_total", outcome="MODEL_INCOMPATIBLE")
        assert refused == 0
        # The pool is fine for the models it can host.
        assert fleet.wait_terminal(fleet.submit("m1"))["status"] == "completed"
