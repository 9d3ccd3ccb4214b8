"""The embedded :class:`~orchestratord.store.Store`: SQLite in WAL (docs/design/persistence.md).

Design:

* **One writer thread, group commit.** Every :meth:`SqliteStore.commit` is handed to a single
  writer thread that drains everything pending, applies it in one transaction and commits
  once, then resolves each caller's future on the event loop. Under many concurrent
  admissions this turns N fsyncs into one while each caller still returns only after its own
  rows are committed. A batch that fails is retried item by item so that one bad write does
  not fail its neighbours.
* **Durability per commit.** ``durable=True`` commits run with ``PRAGMA synchronous=FULL``
  (the WAL is fsynced before the commit returns: a 202 survives power loss);
  ``durable=False`` (token events) runs with ``NORMAL`` (survives ``kill -9`` of the daemon,
  since the WAL is written before the commit returns, but not a power cut).
* **Readers** use their own connection on their own thread; WAL lets them read while the
  writer writes.
* **Schema** is versioned: :data:`MIGRATIONS` are applied in order at :meth:`open`, each in
  its own transaction, recorded in ``schema_version``.
* The database file is created with mode ``0600`` (its directory ``0700``); every query is
  parameterised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from orchestratord.store import (
    JOB_COLUMNS,
    DuplicateTerminalEvent,
    JobFilter,
    JobPage,
    JobRow,
    PolicyRecord,
    PoolRecord,
    StoredEvent,
    row_from_mapping,
    row_values,
)

__all__ = ["MIGRATIONS", "SqliteStore"]

T = TypeVar("T")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE jobs (
            seq            INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id         TEXT NOT NULL UNIQUE,
            model_ref      TEXT NOT NULL,
            prompt         TEXT,
            prompt_hash    TEXT NOT NULL,
            params         TEXT NOT NULL,
            priority       TEXT NOT NULL,
            status         TEXT NOT NULL,
            session_id     TEXT,
            tenant_id      TEXT,
            created_at     REAL NOT NULL,
            queued_at      REAL NOT NULL,
            started_at     REAL,
            finished_at    REAL,
            attempts       INTEGER NOT NULL DEFAULT 0,
            pool_id        TEXT,
            worker_id      TEXT,
            worker_uri     TEXT,
            error_code     TEXT,
            error_message  TEXT,
            timeout_s      REAL NOT NULL,
            tokens         INTEGER NOT NULL DEFAULT 0,
            first_token_at REAL,
            correlation_id TEXT
        );
        CREATE INDEX jobs_unfinished ON jobs (status) WHERE status IN ('queued', 'running');
        CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
        CREATE INDEX jobs_session ON jobs (session_id, seq);
        CREATE INDEX jobs_tenant ON jobs (tenant_id, seq);
        CREATE TABLE events (
            job_id    TEXT NOT NULL,
            event_id  INTEGER NOT NULL,
            kind      TEXT NOT NULL,
            data      TEXT NOT NULL,
            terminal  INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (job_id, event_id)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX events_one_terminal ON events (job_id) WHERE terminal = 1;
        """,
    ),
    (
        2,
        """
        ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'task';
        """,
    ),
    (
        3,
        # Applied scheduler policies (one row per version; the highest is active) and the
        # pools' last inventory (for views after a restart, until they heartbeat again).
        """
        CREATE TABLE scheduler_policies (
            version      INTEGER PRIMARY KEY,
            policy       TEXT NOT NULL,
            placement    TEXT NOT NULL,
            script       TEXT,
            rules        TEXT,
            applied_at   REAL NOT NULL,
            applied_by   TEXT NOT NULL DEFAULT '',
            fingerprint  TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE pools (
            pool_id         TEXT PRIMARY KEY,
            inventory       TEXT NOT NULL,
            last_heartbeat  REAL NOT NULL,
            token           TEXT NOT NULL DEFAULT ''
        );
        """,
    ),
]
"""Versioned schema migrations, applied in order. Append; never edit a released one."""

_JOB_COLUMNS = JOB_COLUMNS
# Column names below are constants of this module, never input: the f-strings are safe.
_COLS = ", ".join(_JOB_COLUMNS)
_PARAMS = ", ".join(":" + c for c in _JOB_COLUMNS)
_SETS = ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMNS if c != "job_id")
_UPSERT = (
    f"INSERT INTO jobs ({_COLS}) VALUES ({_PARAMS}) ON CONFLICT (job_id) DO UPDATE SET {_SETS}"  # noqa: S608
)
_INSERT_EVENT = "INSERT INTO events (job_id, event_id, kind, data, terminal) VALUES (?, ?, ?, ?, ?)"
_HAS_TERMINAL = "SELECT 1 FROM events WHERE job_id = ? AND terminal = 1"
_SELECT_JOB = f"SELECT seq, {', '.join(_JOB_COLUMNS)} FROM jobs"  # noqa: S608


@dataclass(slots=True)
class _Write:
    jobs: list[dict[str, Any]]
    events: list[tuple[str, int, str, str, int]]
    durable: bool
    future: asyncio.Future[None]


_STOP = object()


class SqliteStore:
    """SQLite :class:`~orchestratord.store.Store` at ``path`` (see the module docstring).

    ``path`` may be ``":memory:"``-like only for tests that do not need durability; use a
    file for anything else.
    """

    def __init__(self, path: str | Path, *, max_batch: int = 512) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: str = ""
        self.commits = 0
        """Transactions committed by the writer (a group commit counts once)."""

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file (0600), switch to WAL, apply migrations, start the writer."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open_sync)
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        wconn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        wconn.execute("PRAGMA journal_mode=WAL")
        wconn.execute("PRAGMA foreign_keys=ON")
        wconn.execute("PRAGMA busy_timeout=5000")
        self._migrate(wconn)
        self._wconn = wconn
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        rconn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        rconn.execute("PRAGMA busy_timeout=5000")
        rconn.row_factory = sqlite3.Row
        self._rconn = rconn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_version")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in (s for s in sql.split(";") if s.strip()):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        """The highest applied migration."""
        row = await self._read(
            lambda c: c.execute("SELECT MAX(version) FROM schema_version").fetchone()
        )
        return int(row[0] or 0)

    async def close(self) -> None:
        """Finish pending writes, stop the writer and close both connections."""
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None
        if self._rconn is not None:
            rconn = self._rconn
            self._rconn = None
            await asyncio.get_running_loop().run_in_executor(self._reader, rconn.close)
        self._reader.shutdown(wait=True)

    # -- writes --------------------------------------------------------------------------

    async def commit(
        self,
        *,
        jobs: Sequence[JobRow] = (),
        events: Sequence[StoredEvent] = (),
        durable: bool = True,
        unfenced: bool = False,
    ) -> None:
        """See :meth:`orchestratord.store.Store.commit` (group-committed by the writer)."""
        if self._writer is None or self._loop is None:
            raise RuntimeError("SqliteStore is not open")
        # Serialise now, on the loop's thread: the rows may change after we return.
        write = _Write(
            jobs=[row_values(r) for r in jobs],
            events=[(e.job_id, e.event_id, e.kind, e.data, int(e.terminal)) for e in events],
            durable=durable,
            future=self._loop.create_future(),
        )
        self._queue.put(write)
        await write.future

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._apply([b for b in batch if isinstance(b, _Write)])

    def _apply(self, batch: list[_Write]) -> None:
        results: list[tuple[asyncio.Future[None], BaseException | None]] = []
        try:
            self._transaction(batch)
            results = [(w.future, None) for w in batch]
        except Exception as exc:
            if len(batch) == 1:
                results = [(batch[0].future, exc)]
            else:
                for w in batch:
                    try:
                        self._transaction([w])
                        results.append((w.future, None))
                    except Exception as one:
                        results.append((w.future, one))
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(_resolve, results)

    def _transaction(self, batch: list[_Write]) -> None:
        conn = self._wconn
        assert conn is not None
        sync = "FULL" if any(w.durable for w in batch) else "NORMAL"
        if sync != self._sync:
            conn.execute(f"PRAGMA synchronous={sync}")
            self._sync = sync
        conn.execute("BEGIN IMMEDIATE")
        try:
            for w in batch:
                if w.jobs:
                    conn.executemany(_UPSERT, w.jobs)
                for ev in w.events:
                    if ev[4] and conn.execute(_HAS_TERMINAL, (ev[0],)).fetchone():
                        raise DuplicateTerminalEvent(ev[0])
                    conn.execute(_INSERT_EVENT, ev)
            conn.execute("COMMIT")
            self.commits += 1
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- reads ---------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        if conn is None:
            raise RuntimeError("SqliteStore is not open")
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)

    async def get_job(self, job_id: str) -> JobRow | None:
        """See :meth:`orchestratord.store.Store.get_job`."""
        row = await self._read(
            lambda c: c.execute(f"{_SELECT_JOB} WHERE job_id = ?", (job_id,)).fetchone()
        )
        return None if row is None else row_from_mapping(dict(row))

    async def list_jobs(self, flt: JobFilter, *, limit: int, before: int | None) -> JobPage:
        """See :meth:`orchestratord.store.Store.list_jobs`."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("status", flt.status),
            ("priority", flt.priority),
            ("session_id", flt.session_id),
            ("tenant_id", flt.tenant_id),
            ("model_ref", flt.model),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            where.append("seq < ?")
            args.append(before)
        sql = _SELECT_JOB + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        out = [row_from_mapping(dict(r)) for r in rows[:limit]]
        return JobPage(out, out[-1].seq if len(rows) > limit and out else None)

    async def unfinished_jobs(self) -> list[JobRow]:
        """See :meth:`orchestratord.store.Store.unfinished_jobs`."""
        sql = f"{_SELECT_JOB} WHERE status IN ('queued', 'running') ORDER BY seq"
        rows = await self._read(lambda c: c.execute(sql).fetchall())
        return [row_from_mapping(dict(r)) for r in rows]

    async def unfinished_ids(self) -> list[str]:
        """See :meth:`orchestratord.store.Store.unfinished_ids`."""
        sql = "SELECT job_id FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq"
        rows = await self._read(lambda c: c.execute(sql).fetchall())
        return [str(r[0]) for r in rows]

    async def queued_count(self) -> int:
        """See :meth:`orchestratord.store.Store.queued_count`."""
        sql = "SELECT count(*) FROM jobs WHERE status = 'queued'"
        row = await self._read(lambda c: c.execute(sql).fetchone())
        return int(row[0])

    async def events_after(self, job_id: str, after: int) -> list[StoredEvent]:
        """See :meth:`orchestratord.store.Store.events_after`."""
        sql = (
            "SELECT job_id, event_id, kind, data FROM events "
            "WHERE job_id = ? AND event_id > ? ORDER BY event_id"
        )
        rows = await self._read(lambda c: c.execute(sql, (job_id, after)).fetchall())
        return [StoredEvent(r[0], int(r[1]), r[2], r[3]) for r in rows]

    async def last_event_id(self, job_id: str) -> int:
        """See :meth:`orchestratord.store.Store.last_event_id`."""
        sql = "SELECT MAX(event_id) FROM events WHERE job_id = ?"
        row = await self._read(lambda c: c.execute(sql, (job_id,)).fetchone())
        return int(row[0] or 0)

    async def purge_results(self, finished_before: float) -> int:
        """See :meth:`orchestratord.store.Store.purge_results` (runs on the reader thread
        with its own short transaction; WAL serialises it with the writer)."""
        sql = (
            "DELETE FROM events WHERE kind IN ('token', 'metrics') AND job_id IN "
            "(SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?)"
        )

        def run(c: sqlite3.Connection) -> int:
            cur = c.execute(sql, (finished_before,))
            return int(cur.rowcount)

        return await self._read(run)

    # -- scheduler policies and pool inventory ---------------------------------------------

    async def _write_aside(
        self, fn: Callable[[sqlite3.Connection], None], *, durable: bool
    ) -> None:
        """Run ``fn`` in its own short transaction on the reader thread (WAL serialises it
        with the writer; ``busy_timeout`` waits for it). Rare writes that need not join the
        job writer's group commits."""
        sync = "FULL" if durable else "NORMAL"

        def run(c: sqlite3.Connection) -> None:
            c.execute(f"PRAGMA synchronous={sync}")
            c.execute("BEGIN IMMEDIATE")
            try:
                fn(c)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._read(run)

    async def save_policy(self, record: PolicyRecord) -> None:
        """See :meth:`orchestratord.store.Store.save_policy` (``synchronous=FULL``)."""
        sql = (
            "INSERT INTO scheduler_policies (version, policy, placement, script, rules, "
            "applied_at, applied_by, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        values = (
            record.version,
            record.policy,
            record.placement,
            record.script,
            record.rules,
            record.applied_at,
            record.applied_by,
            record.fingerprint,
        )

        def run(c: sqlite3.Connection) -> None:
            c.execute(sql, values)

        await self._write_aside(run, durable=True)

    async def active_policy(self) -> PolicyRecord | None:
        """See :meth:`orchestratord.store.Store.active_policy`."""
        r = await self._read(lambda c: c.execute(PolicyRecord.LATEST_SQL).fetchone())
        if r is None:
            return None
        return PolicyRecord.of_row(r)

    async def save_pools(self, pools: Sequence[PoolRecord], removed: Sequence[str] = ()) -> None:
        """See :meth:`orchestratord.store.Store.save_pools` (``synchronous=NORMAL``)."""
        upsert = (
            "INSERT INTO pools (pool_id, inventory, last_heartbeat, token) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (pool_id) DO UPDATE SET inventory = excluded.inventory, "
            "last_heartbeat = excluded.last_heartbeat, token = excluded.token"
        )
        rows = [(p.pool_id, p.inventory, p.last_heartbeat, p.token) for p in pools]
        gone = [(pool_id,) for pool_id in removed]

        def run(c: sqlite3.Connection) -> None:
            if rows:
                c.executemany(upsert, rows)
            if gone:
                c.executemany("DELETE FROM pools WHERE pool_id = ?", gone)

        await self._write_aside(run, durable=False)

    async def load_pools(self) -> list[PoolRecord]:
        """See :meth:`orchestratord.store.Store.load_pools`."""
        sql = "SELECT pool_id, inventory, last_heartbeat, token FROM pools ORDER BY pool_id"
        rows = await self._read(lambda c: c.execute(sql).fetchall())
        return [PoolRecord(r[0], r[1], float(r[2]), r[3]) for r in rows]


def _resolve(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for fut, exc in results:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
