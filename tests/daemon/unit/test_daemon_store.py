"""The Store protocol: the same behaviour from the in-memory store, SQLite and PostgreSQL (a
throwaway cluster, ``tests/support/postgres.py``; a fresh database per test)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from orchestrator_core import ErrorCode, Job, JobParams, JobStatus, Priority
from orchestratord.postgres_store import MIGRATIONS as PG_MIGRATIONS
from orchestratord.postgres_store import PostgresStore
from orchestratord.sqlite_store import MIGRATIONS, SqliteStore
from orchestratord.store import (
    DuplicateTerminalEvent,
    JobFilter,
    JobRow,
    MemoryStore,
    Store,
    StoredEvent,
    StoreUnavailable,
)

pytestmark = pytest.mark.asyncio


def row(n: int, *, priority: Priority = Priority.INTERACTIVE, session: str | None = None) -> JobRow:
    job = Job(
        job_id=f"job-{n:04d}",
        model_ref="m1",
        prompt=f"prompt {n}",
        params=JobParams(max_tokens=5, stop=("\n",), seed=7),
        priority=priority,
        session_id=session,
        created_at=1000.0 + n,
        queued_at=1000.0 + n,
    )
    return JobRow(job=job, timeout_s=30.0, correlation_id=f"cid-{n}")


def ev(job_id: str, i: int, kind: str, data: str = "{}") -> StoredEvent:
    return StoredEvent(job_id, i, kind, data)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "d.sqlite3")
    else:
        s = PostgresStore(request.getfixturevalue("postgres_dsn"))
    await s.open()
    yield s
    await s.close()


async def test_rows_round_trip_with_every_field(store: Store) -> None:
    r = row(1, session="s-1")
    r.job.attempts = 2
    r.tokens, r.first_token_at, r.worker_uri = 4, 1001.5, "http://w"
    await store.commit(jobs=[r])
    got = await store.get_job("job-0001")
    assert got is not None
    assert got.job.params == r.job.params
    assert (got.job.prompt, got.job.prompt_hash) == (r.job.prompt, r.job.prompt_hash)
    assert (got.job.session_id, got.job.attempts, got.job.priority) == ("s-1", 2, r.job.priority)
    assert (got.tokens, got.first_token_at, got.worker_uri) == (4, 1001.5, "http://w")
    assert got.correlation_id == "cid-1" and got.timeout_s == 30.0
    assert await store.get_job("job-none") is None


async def test_finished_job_keeps_only_the_prompt_hash(store: Store) -> None:
    r = row(1)
    await store.commit(jobs=[r])
    r.job.start(pool_id="p", worker_id="w", now=1002.0)
    r.job.fail(ErrorCode.WORKER_FAILED, "boom", now=1003.0)
    await store.commit(jobs=[r], events=[ev(r.job.job_id, 1, "error")])
    got = await store.get_job(r.job.job_id)
    assert got is not None
    assert got.job.prompt is None and len(got.job.prompt_hash) == 64
    assert got.job.status is JobStatus.FAILED and got.job.error_code is ErrorCode.WORKER_FAILED


async def test_one_terminal_event_per_job(store: Store) -> None:
    await store.commit(jobs=[row(1)], events=[ev("job-0001", 1, "queued")])
    await store.commit(events=[ev("job-0001", 2, "end")])
    with pytest.raises(DuplicateTerminalEvent):
        await store.commit(events=[ev("job-0001", 3, "error")])
    assert [e.kind for e in await store.events_after("job-0001", 0)] == ["queued", "end"]


async def test_a_failed_commit_applies_nothing(store: Store) -> None:
    await store.commit(events=[ev("job-0001", 1, "end")])
    with pytest.raises(DuplicateTerminalEvent):
        await store.commit(jobs=[row(2)], events=[ev("job-0001", 2, "error")])
    assert await store.get_job("job-0002") is None


async def test_events_after_and_last_event_id(store: Store) -> None:
    kinds = ["queued", "started", "token", "token", "end"]
    await store.commit(events=[ev("j", i + 1, k) for i, k in enumerate(kinds)])
    assert [e.event_id for e in await store.events_after("j", 2)] == [3, 4, 5]
    assert await store.last_event_id("j") == 5
    assert await store.last_event_id("other") == 0


async def test_list_newest_first_with_filters_and_cursor(store: Store) -> None:
    rows = [row(i, priority=Priority.BATCH if i % 2 else Priority.INTERACTIVE) for i in range(5)]
    for r in rows:
        await store.commit(jobs=[r])
    page = await store.list_jobs(JobFilter(), limit=2, before=None)
    assert [r.job.job_id for r in page.rows] == ["job-0004", "job-0003"]
    assert page.next_cursor is not None
    page2 = await store.list_jobs(JobFilter(), limit=2, before=page.next_cursor)
    assert [r.job.job_id for r in page2.rows] == ["job-0002", "job-0001"]
    page3 = await store.list_jobs(JobFilter(), limit=2, before=page2.next_cursor)
    assert [r.job.job_id for r in page3.rows] == ["job-0000"] and page3.next_cursor is None
    batch = await store.list_jobs(JobFilter(priority="batch"), limit=10, before=None)
    assert [r.job.job_id for r in batch.rows] == ["job-0003", "job-0001"]


async def test_unfinished_jobs_come_back_in_admission_order(store: Store) -> None:
    rows = [row(i) for i in range(4)]
    for r in rows:
        await store.commit(jobs=[r])
    rows[1].job.cancel(now=2000.0)
    rows[2].job.start(pool_id="p", worker_id="w", now=2000.0)
    await store.commit(jobs=[rows[2], rows[1]])  # updates keep the original order
    got = await store.unfinished_jobs()
    assert [(r.job.job_id, r.job.status) for r in got] == [
        ("job-0000", JobStatus.QUEUED),
        ("job-0002", JobStatus.RUNNING),
        ("job-0003", JobStatus.QUEUED),
    ]
    assert await store.unfinished_ids() == ["job-0000", "job-0002", "job-0003"]


async def test_queued_count_counts_only_queued_jobs(store: Store) -> None:
    assert await store.queued_count() == 0
    rows = [row(i) for i in range(4)]
    await store.commit(jobs=rows)
    assert await store.queued_count() == 4
    rows[1].job.cancel(now=2000.0)
    rows[2].job.start(pool_id="p", worker_id="w", now=2000.0)
    await store.commit(jobs=[rows[1], rows[2]])
    assert await store.queued_count() == 2


async def test_purge_keeps_rows_and_terminal_events(store: Store) -> None:
    r = row(1)
    r.job.cancel(now=1500.0)
    kinds = ["queued", "token", "metrics", "error"]
    await store.commit(jobs=[r], events=[ev(r.job.job_id, i + 1, k) for i, k in enumerate(kinds)])
    assert await store.purge_results(1400.0) == 0
    assert await store.purge_results(1600.0) == 2
    assert [e.kind for e in await store.events_after(r.job.job_id, 0)] == ["queued", "error"]
    assert await store.get_job(r.job.job_id) is not None


async def test_concurrent_commits_are_group_committed(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.sqlite3")
    await s.open()
    try:
        await asyncio.gather(*(s.commit(jobs=[row(i)]) for i in range(200)))
        assert len((await s.list_jobs(JobFilter(), limit=500, before=None)).rows) == 200
        assert s.commits < 200  # batched into fewer transactions
    finally:
        await s.close()


async def test_sqlite_file_is_private_wal_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "d.sqlite3"
    s = SqliteStore(path)
    await s.open()
    await s.commit(jobs=[row(1)])
    assert await s.schema_version() == MIGRATIONS[-1][0]
    await s.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
    assert versions == [v for v, _ in MIGRATIONS]
    again = SqliteStore(path)  # reopening applies nothing twice
    await again.open()
    assert (await again.get_job("job-0001")) is not None
    await again.close()


# -- PostgreSQL only ---------------------------------------------------------------------------


async def _pg_versions(dsn: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT version FROM schema_version ORDER BY version")
        return [int(v) for (v,) in await cur.fetchall()]


async def test_postgres_migrations_are_idempotent_and_safe_to_race(postgres_dsn: str) -> None:
    stores = [PostgresStore(postgres_dsn) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))  # four daemons start on a fresh db
    try:
        await stores[0].commit(jobs=[row(1)])
        for s in stores:
            assert await s.schema_version() == PG_MIGRATIONS[-1][0]
            assert await s.get_job("job-0001") is not None
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    again = PostgresStore(postgres_dsn)  # reopening applies nothing twice
    await again.open()
    try:
        assert await again.get_job("job-0001") is not None
    finally:
        await again.close()
    assert await _pg_versions(postgres_dsn) == [v for v, _ in PG_MIGRATIONS]


async def test_postgres_concurrent_commits_are_group_committed(postgres_dsn: str) -> None:
    s = PostgresStore(postgres_dsn)
    await s.open()
    try:
        await asyncio.gather(*(s.commit(jobs=[row(i)]) for i in range(200)))
        assert len((await s.list_jobs(JobFilter(), limit=500, before=None)).rows) == 200
        assert s.commits < 200  # batched into fewer transactions
        before = s.commits
        await asyncio.gather(
            *(s.commit(events=[ev(f"job-{i:04d}", 1, "queued")], durable=False) for i in range(50))
        )
        assert s.commits - before < 50
        seqs = [r.seq for r in await s.unfinished_jobs()]
        assert seqs == sorted(seqs) and len(set(seqs)) == 200
    finally:
        await s.close()


async def test_postgres_one_bad_write_does_not_fail_its_batch(postgres_dsn: str) -> None:
    s = PostgresStore(postgres_dsn)
    await s.open()
    try:
        await s.commit(events=[ev("job-0000", 1, "end")])
        results = await asyncio.gather(
            *(s.commit(jobs=[row(i)], events=[ev(f"job-{i:04d}", 2, "end")]) for i in range(20)),
            return_exceptions=True,
        )
        assert isinstance(results[0], DuplicateTerminalEvent)
        assert results[1:] == [None] * 19
        assert await s.get_job("job-0000") is None
        assert all([await s.get_job(f"job-{i:04d}") for i in range(1, 20)])
    finally:
        await s.close()


async def test_postgres_terminal_uniqueness_holds_across_two_stores(postgres_dsn: str) -> None:
    a, b = PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)
    await a.open()
    await b.open()
    try:
        await a.commit(jobs=[row(1)], events=[ev("job-0001", 1, "queued")])
        await a.commit(events=[ev("job-0001", 2, "end")])
        with pytest.raises(DuplicateTerminalEvent) as info:
            await b.commit(jobs=[row(2)], events=[ev("job-0001", 3, "error")])
        assert str(info.value) == "job-0001"
        assert await b.get_job("job-0002") is None  # nothing of the failed commit applied
        with pytest.raises(DuplicateTerminalEvent):  # two in one commit: refused as well
            await b.commit(events=[ev("job-0003", 1, "end"), ev("job-0003", 2, "error")])
        assert [e.kind for e in await b.events_after("job-0001", 0)] == ["queued", "end"]
        assert await b.events_after("job-0003", 0) == []
    finally:
        await a.close()
        await b.close()


async def test_postgres_finished_row_holds_no_prompt(postgres_dsn: str) -> None:
    s = PostgresStore(postgres_dsn)
    await s.open()
    r = row(1)
    try:
        await s.commit(jobs=[r])
        r.job.start(pool_id="p", worker_id="w", now=1002.0)
        await s.commit(jobs=[r], durable=False)
        r.job.complete(now=1003.0)
        await s.commit(jobs=[r], events=[ev(r.job.job_id, 1, "end")])
    finally:
        await s.close()
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        cur = await conn.execute("SELECT prompt, prompt_hash, status FROM jobs")
        assert await cur.fetchall() == [(None, r.job.prompt_hash, "completed")]


async def test_postgres_writer_reconnects_after_its_connection_is_killed(
    postgres_dsn: str,
) -> None:
    s = PostgresStore(postgres_dsn)
    await s.open()
    try:
        await s.commit(jobs=[row(1)])
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreUnavailable):  # a 503, not a 500
            await s.commit(jobs=[row(2)])  # the write on the dead connection fails ...
        await s.commit(jobs=[row(3)])  # ... the next one reconnects
        assert await s.get_job("job-0003") is not None
    finally:
        await s.close()
