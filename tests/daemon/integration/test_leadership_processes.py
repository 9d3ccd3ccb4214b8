"""Two daemon-like processes contend for the leader lease on a real PostgreSQL; the leader
is frozen with SIGSTOP until the other takes over, then thawed with SIGCONT: it must write
nothing more (its fenced writes are refused) and report that it lost
(``tests/support/lease_contender.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.asyncio

TTL = 1.0
ROOT = Path(__file__).resolve().parents[3]


class Contender:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.events.append(json.loads(line))
            self.changed.set()

    def saw(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    async def wait_for(self, kind: str, timeout: float, after: int = 0) -> dict[str, Any]:
        async def until() -> dict[str, Any]:
            while True:
                found = [e for e in self.events[after:] if e["event"] == kind]
                if found:
                    return found[0]
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(until(), timeout)


@pytest.fixture
async def pair(postgres_dsn: str) -> AsyncIterator[list[Contender]]:
    out: list[Contender] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    for name in ("a", "b"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.lease_contender",
            postgres_dsn,
            name,
            str(TTL),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        out.append(Contender(name, proc))
    try:
        yield out
    finally:
        for c in out:
            if c.proc.returncode is None:
                os.kill(c.proc.pid, signal.SIGCONT)
                c.proc.kill()
            await c.proc.wait()
            await c.reader


async def probe_rows(dsn: str, name: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM events WHERE job_id = %s", (f"probe-{name}",)
        )
        found = await cur.fetchone()
    return int(found[0]) if found else 0


async def test_sigstopped_leader_is_replaced_and_fenced_out_after_sigcont(
    pair: list[Contender], postgres_dsn: str
) -> None:
    first = await asyncio.wait_for(
        asyncio.wait(
            [asyncio.create_task(c.wait_for("elected", 20)) for c in pair],
            return_when=asyncio.FIRST_COMPLETED,
        ),
        25,
    )
    del first
    leader = next(c for c in pair if c.saw("elected"))
    other = next(c for c in pair if c is not leader)
    await leader.wait_for("wrote", 5)
    await asyncio.sleep(0.3)
    assert not other.saw("elected")  # one leader at a time

    os.kill(leader.proc.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    elected = await other.wait_for("elected", 2 * TTL + 1)
    took = time.monotonic() - t_stop
    # ttl + one renew period (+ scheduling slack): well within 2x the TTL.
    assert took < TTL + TTL / 3 + 0.5, took
    old_epoch = leader.saw("elected")[-1]["epoch"]
    assert elected["epoch"] == old_epoch + 1
    await other.wait_for("wrote", 5)
    rows_at_stop = await probe_rows(postgres_dsn, leader.name)
    await asyncio.sleep(0.3)

    seen = len(leader.events)
    os.kill(leader.proc.pid, signal.SIGCONT)
    lost = await leader.wait_for("lost", 5, after=seen)
    fenced = await leader.wait_for("fenced", 5, after=seen)
    assert fenced["epoch"] == old_epoch
    assert lost["reason"] in ("local deadline passed", "lease taken over or expired")
    await asyncio.sleep(0.5)
    # Nothing the old leader sent after its pause committed; the new leader keeps writing.
    assert not [e for e in leader.events[seen:] if e["event"] == "wrote"]
    assert await probe_rows(postgres_dsn, leader.name) == rows_at_stop
    assert not [e for e in leader.events[seen:] if e["event"] == "elected"]
    assert other.saw("wrote")[-1]["epoch"] == elected["epoch"]
