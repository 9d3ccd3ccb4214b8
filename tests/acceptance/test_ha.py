"""Several orchestratord on one PostgreSQL (real processes, a real PostgreSQL): one leader
with a fenced lease, followers that take over.

* ``kill -9`` of the leader under a steady submit load, ten times: a follower leads within
  2x the heartbeat interval, every job that got a 202 ends exactly once, and no job ever ran
  on two engines at once (from the simulated engines' ledgers).
* Split brain: the leader is frozen (``SIGSTOP``) until a follower took over, then thawed:
  it dispatches nothing, every job still ends exactly once, and it steps down.
* PostgreSQL restarted while the daemons run: submissions during the outage get 503 with
  ``Retry-After`` (never 500), the daemons reconnect by themselves, nothing accepted is lost.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from orchestratord.testing.processes import (
    DaemonProcess,
    EngineProcess,
    HeartbeatingPool,
    engines,
    wait_until,
)

from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.timeout(300)

HEARTBEAT_S = 1.0

CONFIG = """
[heartbeat]
interval_s = {heartbeat}
missed_threshold = 3

[retry]
base_delay_s = 0.2
max_delay_s = 0.5
jitter = 0.1
max_attempts = 5

[queue]
capacity = -1

[persistence]
backend = "postgres"
postgres_dsn = "{dsn}"

[[models]]
model_ref = "m1"
context_length = 8192
"""


def role(d: DaemonProcess) -> str | None:
    """The daemon's role from ``/health`` (``None`` when it does not answer)."""
    try:
        return str(httpx.get(d.url + "/health", timeout=0.5).json()["role"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def leader_of(daemons: list[DaemonProcess]) -> DaemonProcess | None:
    """The one daemon that says it leads, if exactly one does."""
    leaders = [d for d in daemons if role(d) == "leader"]
    return leaders[0] if len(leaders) == 1 else None


@contextlib.contextmanager
def cluster_of(n: int, tmp: Path, dsn: str) -> Iterator[list[DaemonProcess]]:
    """``n`` daemons with the same configuration on the database at ``dsn``."""
    daemons = []
    try:
        for i in range(n):
            workdir = tmp / f"d{i}"
            workdir.mkdir()
            d = DaemonProcess(workdir, CONFIG.format(heartbeat=HEARTBEAT_S, dsn=dsn))
            daemons.append(d.start(until="/health"))
        wait_until(lambda: leader_of(daemons) is not None, 20, "a leader")
        yield daemons
    finally:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                os.kill(d.proc.pid, signal.SIGCONT)
            d.stop()


def pool_of(daemons: list[DaemonProcess], es: list[EngineProcess]) -> HeartbeatingPool:
    """A pool of ``es`` (4 jobs at once each) that knows every daemon, the leader first."""
    leader = leader_of(daemons)
    urls = [d.url for d in sorted(daemons, key=lambda d: d is not leader)]
    return HeartbeatingPool(urls[0], es, interval_s=0.2, others=urls[1:], max_concurrency=4)


class Load:
    """Clients submitting steadily to every daemon in turn; a submission refused by a
    follower (503) or a dead daemon goes to the next one. Records every 202 and every
    status that is neither 202 nor 503."""

    def __init__(
        self, daemons: list[DaemonProcess], threads: int = 3, pause_s: float = 0.05
    ) -> None:
        self.daemons = daemons
        self.pause_s = pause_s
        self.accepted: list[str] = []
        self.unexpected: list[tuple[int, str]] = []
        self.refused = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        body = {"model": "m1", "prompt": "p", "max_tokens": 5}
        with httpx.Client(timeout=5) as c:
            while not self._stop.is_set():
                d = self.daemons[i % len(self.daemons)]
                i += 1
                try:
                    r = c.post(d.url + "/v2/tasks", json=body)
                except httpx.HTTPError:
                    continue  # down: never accepted
                if r.status_code == 202:
                    self.accepted.append(r.json()["job_id"])
                elif r.status_code == 503:
                    self.refused += 1
                    assert r.headers.get("retry-after")
                else:
                    self.unexpected.append((r.status_code, r.text[:200]))
                time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def terminal_events(d: DaemonProcess, job_id: str) -> list[str]:
    """The kinds of the terminal events stored for ``job_id`` (read on the leader)."""
    r = httpx.get(f"{d.url}/v2/tasks/{job_id}/events", timeout=10)
    assert r.status_code == 200, r.text
    kinds = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    return [k for k in kinds if k in ("end", "error")]


def wait_all_finished(daemons: list[DaemonProcess], job_ids: list[str], timeout_s: float) -> None:
    """Until every job is completed, failed or cancelled (asking any daemon that answers)."""
    pending = set(job_ids)

    def done() -> bool:
        for job_id in list(pending):
            for d in daemons:
                try:
                    r = httpx.get(f"{d.url}/v2/tasks/{job_id}", timeout=2)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200 and r.json()["status"] in (
                    "completed",
                    "failed",
                    "cancelled",
                ):
                    pending.discard(job_id)
                break
        return not pending

    wait_until(done, timeout_s, f"{len(pending)} jobs to finish")


def runs_overlap(es: list[EngineProcess]) -> list[str]:
    """Jobs that ran on two engines (or twice) at the same time, from the ledgers."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for e in es:
        stats = httpx.get(e.url + "/sim/stats", timeout=10).json()
        for job_id, job in stats["jobs"].items():
            for run in job["runs"]:
                end = run.get("ended_at") or time.time()
                spans.setdefault(job_id, []).append((run["started_at"], end))
    bad = []
    for job_id, runs in spans.items():
        runs.sort()
        if any(b[0] < a[1] - 0.001 for a, b in itertools.pairwise(runs)):
            bad.append(job_id)
    return bad


def test_kill_9_of_the_leader_ten_times_under_load(tmp_path: Path, postgres_dsn: str) -> None:
    failovers: list[float] = []
    args = ["--ttft-ms", "5", "--tokens-per-s", "200", "--concurrency", "4"]
    with (
        cluster_of(3, tmp_path, postgres_dsn) as daemons,
        engines(2, args=args) as es,
    ):
        pool = pool_of(daemons, es)
        with pool, Load(daemons) as load:
            wait_until(lambda: len(load.accepted) >= 20, 30, "jobs accepted")
            for _ in range(10):
                leader = leader_of(daemons)
                assert leader is not None
                before = len(load.accepted)
                leader.kill9()
                t0 = time.monotonic()
                rest = [d for d in daemons if d is not leader]
                wait_until(lambda r=rest: leader_of(r) is not None, 2 * HEARTBEAT_S + 5, "leader")
                failovers.append(time.monotonic() - t0)
                leader.start(until="/health")  # it comes back as a follower
                wait_until(lambda b=before: len(load.accepted) >= b + 10, 30, "more jobs")
        ledger_overlaps = runs_overlap(es)
        leader = leader_of(daemons)
        assert leader is not None
        wait_all_finished(daemons, load.accepted, 120)
        assert load.unexpected == []
        assert len(set(load.accepted)) == len(load.accepted)
        for job_id in load.accepted:
            assert len(terminal_events(leader, job_id)) == 1, job_id
    print(
        f"\nfailover over {len(failovers)} kill -9: p50 {statistics.median(failovers):.2f} s,"
        f" max {max(failovers):.2f} s (heartbeat {HEARTBEAT_S} s);"
        f" {len(load.accepted)} jobs accepted, {load.refused} submissions sent elsewhere (503)"
    )
    assert max(failovers) <= 2 * HEARTBEAT_S + 0.5  # measured from the kill to /health
    assert ledger_overlaps == []


def _dispatches_after(log_path: Path, t: float) -> int:
    """``job.dispatched`` lines in a daemon's JSON log stamped after ``t`` (Unix time)."""
    n = 0
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec: dict[str, Any] = json.loads(line)
            if rec.get("event") == "job.dispatched" and float(rec.get("ts", 0)) > t:
                n += 1
    return n


def test_a_frozen_leader_is_fenced_out_then_steps_down(tmp_path: Path, postgres_dsn: str) -> None:
    args = ["--ttft-ms", "5", "--tokens-per-s", "40", "--concurrency", "4"]
    with (
        cluster_of(2, tmp_path, postgres_dsn) as daemons,
        engines(2, args=args) as es,
    ):
        pool = pool_of(daemons, es)
        with pool, Load(daemons, threads=2) as load:
            wait_until(lambda: len(load.accepted) >= 10, 30, "jobs accepted")
            old = leader_of(daemons)
            assert old is not None and old.proc is not None
            os.kill(old.proc.pid, signal.SIGSTOP)  # frozen mid-stream, lease and all
            new = next(d for d in daemons if d is not old)
            wait_until(lambda: role(new) == "leader", 2 * HEARTBEAT_S + 5, "a new leader")
            time.sleep(0.5)
            thawed_at = time.time()
            os.kill(old.proc.pid, signal.SIGCONT)
            wait_until(lambda: role(old) == "follower", 10, "the old leader to step down")
            n = len(load.accepted)
            wait_until(lambda: len(load.accepted) >= n + 10, 30, "more jobs")
        wait_all_finished(daemons, load.accepted, 120)
        assert load.unexpected == []
        for job_id in load.accepted:
            assert len(terminal_events(new, job_id)) == 1, job_id
        assert role(old) == "follower" and role(new) == "leader"
        assert _dispatches_after(old.log_path, thawed_at) == 0
        assert runs_overlap(es) == []


def test_a_postgres_restart_is_503_then_nothing_is_lost(
    tmp_path: Path, postgres_dsn: str, postgres_cluster: PostgresCluster
) -> None:
    args = ["--ttft-ms", "5", "--tokens-per-s", "200", "--concurrency", "4"]
    with (
        cluster_of(2, tmp_path, postgres_dsn) as daemons,
        engines(1, args=args) as es,
    ):
        pool = pool_of(daemons, es)
        with pool, Load(daemons, threads=2) as load:
            wait_until(lambda: len(load.accepted) >= 10, 30, "jobs accepted")
            refused = load.refused
            postgres_cluster.restart(down_s=2.0)
            n = len(load.accepted)
            wait_until(lambda: len(load.accepted) >= n + 20, 60, "submissions again")
        assert load.unexpected == []  # 202 or 503, never a 500
        assert load.refused > refused  # the outage was seen, as 503s
        leader = leader_of(daemons)
        assert leader is not None
        wait_all_finished(daemons, load.accepted, 120)
        for job_id in load.accepted:
            assert len(terminal_events(leader, job_id)) == 1, job_id


def follow(
    d: DaemonProcess, job_id: str, last: int | None = None, stop_after: int | None = None
) -> list[tuple[int, str]]:
    """(id, kind) of the SSE events of ``job_id`` read from ``d``, until the terminal one
    (or ``stop_after`` events)."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    out: list[tuple[int, str]] = []
    event_id, kind = 0, ""
    with httpx.stream("GET", f"{d.url}/v2/tasks/{job_id}/events", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((event_id, kind))
                if kind in ("end", "error") or (stop_after and len(out) >= stop_after):
                    break
    return out


def test_followers_take_submissions_and_serve_streams_with_resume(
    tmp_path: Path, postgres_dsn: str
) -> None:
    args = ["--ttft-ms", "5", "--tokens-per-s", "50", "--concurrency", "4"]
    with (
        cluster_of(3, tmp_path, postgres_dsn) as daemons,
        engines(1, args=args) as es,
    ):
        leader = leader_of(daemons)
        assert leader is not None
        f1, f2 = [d for d in daemons if d is not leader]
        with pool_of(daemons, es):
            body = {"model": "m1", "prompt": "p", "max_tokens": 20}
            r = httpx.post(f1.url + "/v2/tasks", json=body, timeout=10)
            assert r.status_code == 202, r.text  # stored by a follower, run by the leader
            job_id = r.json()["job_id"]
            first = follow(f1, job_id, stop_after=6)
            rest = follow(f2, job_id, last=first[-1][0])  # resumed on another follower
        events = first + rest
        assert [i for i, _ in events] == list(range(1, len(events) + 1))
        assert events[0][1] == "queued" and events[-1][1] == "end"
        assert sum(1 for _, k in events if k == "token") == 20
        cancel = httpx.post(f2.url + "/v2/tasks", json={**body, "max_tokens": 2000}, timeout=10)
        other = cancel.json()["job_id"]
        wait_until(
            lambda: httpx.get(f"{f2.url}/v2/tasks/{other}").json()["status"] == "running",
            20,
            "the job to run",
        )
        assert httpx.delete(f"{f2.url}/v2/tasks/{other}", timeout=10).status_code == 200
        wait_until(
            lambda: httpx.get(f"{f2.url}/v2/tasks/{other}").json()["status"] == "cancelled",
            20,
            "a cancel asked of a follower to reach the leader",
        )


def test_a_stream_through_a_follower_survives_the_leaders_death(
    tmp_path: Path, postgres_dsn: str
) -> None:
    args = ["--ttft-ms", "5", "--tokens-per-s", "20", "--concurrency", "4"]
    with (
        cluster_of(3, tmp_path, postgres_dsn) as daemons,
        engines(1, args=args) as es,
    ):
        leader = leader_of(daemons)
        assert leader is not None
        follower = next(d for d in daemons if d is not leader)
        with pool_of(daemons, es):
            body = {"model": "m1", "prompt": "p", "max_tokens": 60}
            job_id = httpx.post(follower.url + "/v2/tasks", json=body, timeout=10).json()["job_id"]
            seen: list[tuple[int, str]] = []
            reader = threading.Thread(target=lambda: seen.extend(follow(follower, job_id)))
            reader.start()
            wait_until(lambda: _tokens_of(follower, job_id), 20, "tokens")
            time.sleep(0.5)
            leader.kill9()
            reader.join(60)
        assert not reader.is_alive()
        ids = [i for i, _ in seen]
        kinds = [k for _, k in seen]
        assert kinds[0] == "queued" and kinds[-1] in ("end", "error")
        assert sum(1 for k in kinds if k in ("end", "error")) == 1
        assert ids == sorted(set(ids))  # no repeat, in order
        assert ids[:-1] == list(range(1, len(ids)))  # no gap before the terminal event
        assert "token" in kinds


def _tokens_of(d: DaemonProcess, job_id: str) -> bool:
    return int(httpx.get(f"{d.url}/v2/tasks/{job_id}", timeout=5).json()["tokens_generated"]) > 0


def test_a_follower_refuses_a_submission_when_the_queue_is_full(
    tmp_path: Path, postgres_dsn: str
) -> None:
    full = CONFIG.format(heartbeat=HEARTBEAT_S, dsn=postgres_dsn).replace(
        "capacity = -1", "capacity = 2"
    )
    daemons = []
    try:
        for i in range(2):
            (tmp_path / f"d{i}").mkdir()
            daemons.append(DaemonProcess(tmp_path / f"d{i}", full).start(until="/health"))
        wait_until(lambda: leader_of(daemons) is not None, 20, "a leader")
        follower = next(d for d in daemons if role(d) == "follower")
        body = {"model": "m1", "prompt": "p", "max_tokens": 2}
        codes = [
            httpx.post(follower.url + "/v2/tasks", json=body, timeout=10).status_code
            for _ in range(3)
        ]  # no pool: the jobs stay queued
        assert codes == [202, 202, 429]
    finally:
        for d in daemons:
            d.stop()
