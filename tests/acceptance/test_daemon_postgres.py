"""A real ``orchestratord`` process on ``persistence.backend = "postgres"`` (a database of the
session's throwaway cluster, over TCP): what it accepted is still there after a ``kill -9``
and after a clean restart, and a recovered queued job runs to its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from orchestratord.testing.processes import DaemonProcess, HeartbeatingPool, engines, wait_until

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[heartbeat]
interval_s = 0.5
missed_threshold = 3

[persistence]
backend = "postgres"
postgres_dsn = "{dsn}"

[[models]]
model_ref = "m1"
context_length = 8192
"""


def submit(d: DaemonProcess, **fields: Any) -> str:
    body = {"model": "m1", "prompt": "Tell me a story", "max_tokens": 6, **fields}
    r = httpx.post(d.url + "/v2/tasks", json=body, timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def status(d: DaemonProcess, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{d.url}/v2/tasks/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_terminal(d: DaemonProcess, job_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def done() -> bool:
        out.update(status(d, job_id))
        return out["status"] in ("completed", "failed", "cancelled")

    wait_until(done, 30, f"{job_id} to finish")
    return out


def replay(d: DaemonProcess, job_id: str) -> list[str]:
    """The kinds of a job's SSE events, from the first to the terminal one."""
    kinds: list[str] = []
    with httpx.stream("GET", f"{d.url}/v2/tasks/{job_id}/events", timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
                if kinds[-1] in ("end", "error"):
                    break
    return kinds


def test_jobs_survive_kill_9_and_restart_on_postgres(tmp_path: Path, postgres_dsn: str) -> None:
    d = DaemonProcess(tmp_path, CONFIG.format(dsn=postgres_dsn))
    try:
        d.start()
        queued = submit(d)  # no worker yet: stays queued
        assert status(d, queued)["status"] == "queued"
        d.kill9()  # a 202 was answered only after the durable commit
        d.start()
        assert status(d, queued)["status"] == "queued"
        args = ["--ttft-ms", "5", "--tokens-per-s", "500"]
        with engines(1, args=args) as es, HeartbeatingPool(d.url, es):
            done = submit(d)
            assert wait_terminal(d, done)["status"] == "completed"
            assert wait_terminal(d, queued)["status"] == "completed"
        d.stop()  # SIGTERM: a clean restart
        d.start()
        for job_id in (queued, done):
            final = status(d, job_id)
            assert final["status"] == "completed" and final["tokens_generated"] == 6, final
            kinds = replay(d, job_id)
            assert kinds[:2] == ["queued", "started"] and kinds[-1] == "end", kinds
            assert kinds.count("token") == 6
    finally:
        d.stop()
    assert not d.data_dir.exists() or not any(d.data_dir.iterdir())  # nothing went to SQLite
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT job_id, status, prompt FROM jobs ORDER BY seq").fetchall()
        terminals = conn.execute(
            "SELECT job_id, count(*) FROM events WHERE kind IN ('end', 'error') GROUP BY job_id"
        ).fetchall()
    assert rows == [(queued, "completed", None), (done, "completed", None)]
    assert sorted(terminals) == sorted([(queued, 1), (done, 1)])
