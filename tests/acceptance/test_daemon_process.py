"""A real ``orchestratord`` process, real simulated engines (``llorch-sim engine``) and a
stand-in pool agent, all over HTTP on loopback. Each test starts its own daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from orchestratord.services.events import LOST_EVENTS_GAP
from orchestratord.testing.processes import (
    DaemonProcess,
    EngineProcess,
    HeartbeatingPool,
    engines,
    stop_child,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[heartbeat]
interval_s = 0.5
missed_threshold = 3

[retry]
base_delay_s = 0.3
max_delay_s = 0.5
jitter = 0.1
max_attempts = 3

[timeout]
cancel_deadline_s = 2.0
reconnect_grace_s = 1.0

[queue]
capacity = {capacity}

[[models]]
model_ref = "m1"
context_length = 8192
"""

Event = tuple[int, str, dict[str, Any]]


def config(capacity: int = 100) -> str:
    return CONFIG.format(capacity=capacity)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path, config())
    try:
        yield d.start()
    finally:
        d.stop()


def submit(d: DaemonProcess, **fields: Any) -> httpx.Response:
    body = {"model": "m1", "prompt": "Tell me a story", "max_tokens": 8, **fields}
    return httpx.post(d.url + "/v2/tasks", json=body, timeout=10)


def status(d: DaemonProcess, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{d.url}/v2/tasks/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_terminal(d: DaemonProcess, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def done() -> bool:
        out.update(status(d, job_id))
        return out["status"] in ("completed", "failed", "cancelled")

    wait_until(done, timeout_s, f"{job_id} to finish")
    return out


def read_events(
    d: DaemonProcess, job_id: str, *, last: int | None = None, stop_after: int | None = None
) -> list[Event]:
    """Follow the SSE stream (live) until the terminal event, or ``stop_after`` events."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    events: list[Event] = []
    fields: dict[str, str] = {}
    with httpx.stream("GET", f"{d.url}/v2/tasks/{job_id}/events", headers=headers, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" in fields:
                events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                if fields["event"] in ("end", "error"):
                    break
                if stop_after is not None and len(events) >= stop_after:
                    break
            fields = {}
    return events


def kinds(events: list[Event]) -> list[str]:
    return [k for _, k, _ in events]


def test_submit_queued_started_tokens_end(daemon: DaemonProcess) -> None:
    args = ["--ttft-ms", "5", "--tokens-per-s", "500"]
    with engines(1, args=args) as es, HeartbeatingPool(daemon.url, es):
        r = submit(daemon, max_tokens=12)
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        events = read_events(daemon, job_id)
    k = kinds(events)
    assert k[0] == "queued" and k[1] == "started" and k[-1] == "end"
    assert k.count("token") == 12
    assert [i for i, _, _ in events] == list(range(1, len(events) + 1))
    final = status(daemon, job_id)
    assert final["status"] == "completed" and final["tokens_generated"] == 12
    assert final["worker_id"] == "e0"


def test_cancel_while_queued_and_while_running(daemon: DaemonProcess) -> None:
    queued = submit(daemon).json()["job_id"]  # no worker yet: stays queued
    r = httpx.delete(f"{daemon.url}/v2/tasks/{queued}", timeout=10)
    assert r.json()["status"] == "cancelled"
    assert kinds(read_events(daemon, queued)) == ["queued", "error"]
    args = ["--ttft-ms", "5", "--tokens-per-s", "20"]
    with engines(1, args=args) as es, HeartbeatingPool(daemon.url, es):
        running = submit(daemon, max_tokens=200).json()["job_id"]
        first = read_events(daemon, running, stop_after=4)
        assert kinds(first)[-1] == "token"
        t0 = time.monotonic()
        r = httpx.delete(f"{daemon.url}/v2/tasks/{running}", timeout=10)
        assert r.json()["status"] == "cancelled"
        assert time.monotonic() - t0 < 2.5  # the engine confirmed well within 5 s
    events = read_events(daemon, running)
    assert events[-1][1] == "error" and events[-1][2]["code"] == "CANCELLED"
    assert kinds(events).count("error") == 1


def test_timeout_ends_with_deadline_exceeded(daemon: DaemonProcess) -> None:
    args = ["--ttft-ms", "5", "--hang-after-tokens", "2"]
    with engines(1, args=args) as es, HeartbeatingPool(daemon.url, es):
        job_id = submit(daemon, timeout_s=1.0).json()["job_id"]
        events = read_events(daemon, job_id)
    assert kinds(events) == ["queued", "started", "token", "token", "error"]
    assert events[-1][2]["code"] == "DEADLINE_EXCEEDED"


def test_worker_dies_before_first_token_then_job_is_retried(daemon: DaemonProcess) -> None:
    crashing = EngineProcess(
        worker_id="e0",
        args=["--ttft-ms", "5", "--crash-after-tokens", "0", "--crash-scope", "engine"],
    ).start()
    with crashing, HeartbeatingPool(daemon.url, [crashing]) as pool:
        job_id = submit(daemon).json()["job_id"]
        wait_until(lambda: not crashing.alive, 20, "the engine to crash")
        with EngineProcess(worker_id="e1", args=["--ttft-ms", "5"]) as healthy:
            pool.engines.append(healthy)
            final = wait_terminal(daemon, job_id)
    assert final["status"] == "completed", final
    assert final["attempts"] == 2 and final["worker_id"] == "e1"
    assert kinds(read_events(daemon, job_id)).count("started") == 1


def test_worker_dies_after_first_token_fails_worker_failed(daemon: DaemonProcess) -> None:
    args = ["--ttft-ms", "5", "--tokens-per-s", "200", "--crash-after-tokens", "3"]
    with engines(1, args=args) as es, HeartbeatingPool(daemon.url, es):
        job_id = submit(daemon, max_tokens=20).json()["job_id"]
        events = read_events(daemon, job_id)
    assert kinds(events) == ["queued", "started", "token", "token", "token", "error"]
    assert events[-1][2]["code"] == "WORKER_FAILED"
    assert status(daemon, job_id)["attempts"] == 1


def test_sse_reconnect_with_last_event_id_loses_and_duplicates_nothing(
    daemon: DaemonProcess,
) -> None:
    args = ["--ttft-ms", "5", "--tokens-per-s", "100"]
    with engines(1, args=args) as es, HeartbeatingPool(daemon.url, es):
        job_id = submit(daemon, max_tokens=40).json()["job_id"]
        got: list[Event] = []
        while not got or got[-1][1] not in ("end", "error"):
            last = got[-1][0] if got else None
            got += read_events(daemon, job_id, last=last, stop_after=7)
    replay = read_events(daemon, job_id)
    assert got == replay
    assert kinds(got).count("token") == 40 and kinds(got)[-1] == "end"


def test_full_queue_answers_429(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, config(capacity=2)) as d:
        assert submit(d).status_code == 202
        assert submit(d).status_code == 202
        r = submit(d)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "QUEUE_FULL"


def test_invalid_config_exits_2_with_key_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[queue]\ncapacity = 0\n[server]\nport = "x"\n', encoding="utf-8")
    exe = str(Path(sys.executable).parent / "orchestratord")
    p = subprocess.run(
        [exe, "--config", str(bad)], check=False, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2
    assert "queue.capacity: must be -1 or >= 1, got 0" in p.stderr
    assert "server.port" in p.stderr
    assert "Traceback" not in p.stderr


def test_kill_9_under_load_every_accepted_job_ends_exactly_once(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, config(capacity=-1)).start()
    accepted: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                body = {"model": "m1", "prompt": "p", "max_tokens": 5}
                try:
                    r = c.post(d.url + "/v2/tasks", json=body)
                except httpx.HTTPError:
                    continue  # the daemon is down: this one was never accepted
                if r.status_code == 202:
                    accepted.append(r.json()["job_id"])

    try:
        args = ["--ttft-ms", "5", "--tokens-per-s", "100"]
        with engines(2, args=args) as es, HeartbeatingPool(d.url, es):
            threads = [threading.Thread(target=load) for _ in range(3)]
            for t in threads:
                t.start()
            wait_until(lambda: len(accepted) >= 60, 30, "60 accepted jobs")
            d.kill9()
            d.start()  # same data dir and port
            wait_until(lambda: len(accepted) >= 90, 30, "more accepted jobs")
            stop.set()
            for t in threads:
                t.join(10)
            for job_id in accepted:
                wait_terminal(d, job_id, timeout_s=60)
        assert len(set(accepted)) == len(accepted)
        for job_id in accepted:
            events = read_events(d, job_id)
            terminals = [k for k in kinds(events) if k in ("end", "error")]
            assert len(terminals) == 1, (job_id, events)
            ids = [i for i, _, _ in events]
            final = status(d, job_id)
            assert final["status"] in ("completed", "failed")
            if final["status"] == "failed":
                assert final["error"]["code"] == "WORKER_FAILED", final
            if final["status"] == "failed" and ids[-1] > len(events):
                # killed mid-stream: tokens published but not yet stored are lost, and the
                # terminal event is numbered past any id a client may hold
                assert ids[:-1] == list(range(1, len(events))), events
                assert ids[-1] == ids[-2] + LOST_EVENTS_GAP + 1, events
            else:
                assert ids == list(range(1, len(events) + 1)), events
    finally:
        stop.set()
        d.stop()


def test_client_gone_past_the_grace_period_cancels_the_job(daemon: DaemonProcess) -> None:
    args = ["--ttft-ms", "5", "--tokens-per-s", "20"]
    with engines(1, args=args) as es, HeartbeatingPool(daemon.url, es):
        kept = submit(daemon, max_tokens=60).json()["job_id"]
        first = read_events(daemon, kept, stop_after=3)  # disconnects after 3 events
        time.sleep(0.4)  # back within the 1 s grace period
        rest = read_events(daemon, kept, last=first[-1][0], stop_after=3)
        assert rest[0][0] == first[-1][0] + 1
        assert status(daemon, kept)["status"] == "running"
        httpx.delete(f"{daemon.url}/v2/tasks/{kept}", timeout=10)
        left = submit(daemon, max_tokens=200).json()["job_id"]
        read_events(daemon, left, stop_after=3)  # ... and never comes back
        final = wait_terminal(daemon, left, timeout_s=10)
    assert final["status"] == "cancelled"
    assert final["error"]["code"] == "CANCELLED"
    assert "client disconnected" in final["error"]["message"]


def test_simulated_pool_gets_a_worker_started_and_runs_jobs(tmp_path: Path) -> None:
    """The full loop with ``llorch-sim pool``: it registers and heartbeats, the built-in
    policy asks it to start a worker for the queued model, the job runs there."""
    with DaemonProcess(tmp_path, config()) as d:
        exe = str(Path(sys.executable).parent / "llorch-sim")
        pool = subprocess.Popen(
            [
                exe,
                "pool",
                "--orchestrator",
                d.url,
                "--pool-id",
                "sim-1",
                "--gpus",
                "1",
                "--vram-gb",
                "24",
                "--models",
                "m1:6",
                "--heartbeat-interval",
                "0.5",
                "--ttft-ms",
                "5",
                "--tokens-per-s",
                "500",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: httpx.get(d.url + "/v2/pools").json()["pools"],
                20,
                "the simulated pool to register",
            )
            jobs = [submit(d, max_tokens=6).json()["job_id"] for _ in range(3)]
            finals = [wait_terminal(d, j, timeout_s=30) for j in jobs]
        finally:
            stop_child(pool, grace_s=10)
    assert [f["status"] for f in finals] == ["completed"] * 3
    assert {f["pool_id"] for f in finals} == {"sim-1"}
    assert all(f["tokens_generated"] == 6 for f in finals)
