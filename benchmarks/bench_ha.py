"""Benchmark: admission (POST /v2/tasks → 202) on one orchestratord with SQLite, one with
PostgreSQL, and 2 and 3 orchestratord on one PostgreSQL behind a round-robin client.

Real processes: ``orchestratord`` daemons (:class:`DaemonProcess`) and a throwaway
PostgreSQL cluster (``tests/support/postgres.py``: ``initdb`` into a temporary directory,
deleted at the end; ``make postgres`` installs the server binaries). Every daemon has an
unbounded queue and no pools, so every job stays queued: the figures are admission only
(parse, validate, enqueue, durable commit, 202).

The load is closed-loop: ``--clients`` concurrent clients (aiohttp, kept-alive connections)
send a fixed number of requests between them; each request goes to the next instance in
turn. Where followers refuse submissions (``503 NOT_LEADER``), the client retries the
request on the leader named by ``X-Orchestrator-Leader`` and counts a redirect (its latency
includes both hops); where followers accept submissions themselves, redirects are 0. Each
setup gets a fresh database. Prints req/s, p50 and p99 latency, redirects, and the ratios
to the single daemon on SQLite measured in the same run. The load generator shares the
machine with the daemons and PostgreSQL, so absolute figures are pessimistic; compare the
same-run ratios.

Run: .venv/bin/python benchmarks/bench_ha.py [--quick] [--clients N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
from orchestratord.testing.processes import DaemonProcess, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from tests.support.postgres import PostgresCluster, postgres_unavailable

MODELS = """
[queue]
capacity = -1

[[models]]
model_ref = "m1"
context_length = 8192
"""

POSTGRES = """
[persistence]
backend = "postgres"
postgres_dsn = "{dsn}"
"""

BODY = {"model": "m1", "prompt": "Summarise the plot of Hamlet in one line.", "max_tokens": 64}
LEADER_HEADER = "X-Orchestrator-Leader"


def role(url: str) -> str | None:
    """The daemon's role from ``/health`` (``None`` when it does not answer)."""
    try:
        return str(httpx.get(url + "/health", timeout=1.0).json().get("role"))
    except (httpx.HTTPError, ValueError):
        return None


@contextlib.contextmanager
def daemons(tmp: Path, n: int, dsn: str | None) -> Iterator[list[DaemonProcess]]:
    """``n`` daemons on the database at ``dsn`` (SQLite when ``None``), one leading."""
    config = MODELS + (POSTGRES.format(dsn=dsn) if dsn else "")
    started: list[DaemonProcess] = []
    try:
        for i in range(n):
            workdir = tmp / f"{'pg' if dsn else 'sqlite'}-{n}-{i}"
            workdir.mkdir()
            started.append(DaemonProcess(workdir, config).start(until="/health"))
        urls = [d.url for d in started]
        wait_until(lambda: sum(role(u) == "leader" for u in urls) == 1, 30, "exactly one leader")
        yield started
    finally:
        for d in started:
            d.stop()


async def load(urls: list[str], clients: int, total: int) -> dict[str, float]:
    """``total`` admissions from ``clients`` closed-loop clients, round robin over ``urls``
    (after a short warm-up on every instance). A ``503`` naming the leader is retried there
    (a redirect); any other refusal is retried after a short pause and counted."""
    latencies: list[float] = []
    counters = {"redirects": 0, "retries": 0, "errors": 0}
    turn = 0
    remaining = total

    async def submit(session: aiohttp.ClientSession, url: str) -> bool:
        for _ in range(20):
            async with session.post(url + "/v2/tasks", json=BODY) as r:
                await r.read()
                if r.status == 202:
                    return True
                leader = r.headers.get(LEADER_HEADER)
                if r.status == 503 and leader and leader.rstrip("/") != url:
                    counters["redirects"] += 1
                    url = leader.rstrip("/")
                    continue
            counters["retries"] += 1
            await asyncio.sleep(0.05)
        counters["errors"] += 1
        return False

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal turn, remaining
        while remaining > 0:
            remaining -= 1
            url = urls[turn % len(urls)]
            turn += 1
            t0 = time.perf_counter()
            if await submit(session, url):
                latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for url in urls:  # warm-up: connections, caches, the database's plans
            await asyncio.gather(*(submit(session, url) for _ in range(min(clients, 32))))
        counters.update(redirects=0, retries=0, errors=0)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    if not latencies:
        raise RuntimeError("no admission succeeded")
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        **counters,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=None, help="requests per setup")
    args = parser.parse_args()
    clients = args.clients or (16 if args.quick else 32)
    total = args.requests or (400 if args.quick else 4000)
    why = postgres_unavailable()
    print(f"admission, {clients} clients, {total} requests per setup, round robin")
    header = (
        f"{'setup':<24} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'redirects':>9} "
        f"{'errors':>6} | {'req/s ÷ sqlite':>14} {'p99 × sqlite':>12}"
    )
    print(header)
    print("-" * len(header))
    base: dict[str, float] | None = None

    def row(name: str, r: dict[str, float]) -> None:
        assert base is not None
        print(
            f"{name:<24} {r['rps']:>7,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['redirects']:>9,.0f} {r['errors']:>6,.0f} | "
            f"{r['rps'] / base['rps']:>14.2f} {r['p99_ms'] / base['p99_ms']:>12.2f}",
            flush=True,
        )

    failed = False
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with daemons(tmp, 1, None) as ds:
            base = asyncio.run(load([d.url for d in ds], clients, total))
        row("sqlite ×1", base)
        failed |= base["errors"] > 0
        if why is not None:
            print(f"PostgreSQL setups skipped: {why}")
            return 1 if failed else 0
        cluster = PostgresCluster().start()
        try:
            for n in (1, 2, 3):
                with daemons(tmp, n, cluster.create_database("bench")) as ds:
                    r = asyncio.run(load([d.url for d in ds], clients, total))
                row(f"postgres ×{n}" + (" round robin" if n > 1 else ""), r)
                failed |= r["errors"] > 0
        finally:
            cluster.stop()
    print(
        "redirects: requests a follower refused (503 NOT_LEADER) and the client retried on "
        "the leader it named; 0 where followers accept submissions"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
