"""A PostgreSQL :class:`~orchestratord.store.Store` (``persistence.backend = "postgres"``).

The same contract as :class:`~orchestratord.sqlite_store.SqliteStore`, on a server that
several daemons can share (docs/design/persistence.md).

**Driver: psycopg 3** (``psycopg[binary]`` and ``psycopg_pool``). It is the PostgreSQL
project's own Python adapter, maintained alongside libpq; it is async-native
(:class:`psycopg.AsyncConnection`), has a connection pool kept by the same project
(:class:`psycopg_pool.AsyncConnectionPool`), pipeline mode (``executemany`` sends a whole
batch in one round trip), typed rows and errors mapped to SQLSTATE classes
(:class:`psycopg.errors.UniqueViolation`), and ``LISTEN``/``NOTIFY`` through
``conn.notifies()`` — which the leader election and cross-daemon wake-ups to come will use.
asyncpg would also work, but it has no pool-independent typed row factories, uses its own
protocol implementation instead of libpq (so no ``PGSERVICE``/``.pgpass``/libpq DSN options
as operators know them), and its pool is a separate design; psycopg keeps both in one project.

Design:

* **One writer connection, group commit.** Every :meth:`PostgresStore.commit` is put on a
  queue; one writer task takes everything pending (up to ``max_batch``), applies it in one
  transaction, commits once, then resolves each caller's future. A batch that fails is
  retried write by write, so one bad write does not fail its neighbours.
* **Durability per commit.** ``durable=True`` commits with the server's
  ``synchronous_commit`` (``on`` by default: the WAL is flushed before ``COMMIT`` returns,
  so a 202 survives power loss — the server must run with ``fsync = on``);
  ``durable=False`` (token events) runs with ``SET LOCAL synchronous_commit = off`` (the
  commit returns before the WAL flush: it survives a crash of the daemon, and of the server
  process, but not a power cut of the database host). A batch is durable if any of its
  writes is.
* **One terminal event per job is enforced by the database**: a partial unique index on
  ``events (job_id) WHERE kind IN ('end', 'error')``. Its violation is raised as
  :class:`~orchestratord.store.DuplicateTerminalEvent` and the transaction applies nothing —
  even when the first terminal event was written by another daemon.
* **Reads** go through a small :class:`~psycopg_pool.AsyncConnectionPool` (autocommit), so
  they never wait for the writer.
* **Schema** is versioned: :data:`MIGRATIONS` are applied in order at :meth:`open`, in one
  transaction that first takes ``pg_advisory_xact_lock`` — two daemons starting at once on
  a fresh database do not race — and recorded in ``schema_version``. Migration 2 adds the
  leader lease and its fencing function (:mod:`orchestratord.leadership`); migration 3 the
  applied scheduler policies and the pools' last inventory (written outside the job writer,
  on a pooled connection, fenced with :attr:`PostgresStore.term_fence` the same way);
  released migrations are never edited, only appended.
* **Fenced commits**: ``commit(..., fence=(name, holder, epoch))`` runs ``llorch_fence``
  in the transaction; it refuses a stale epoch at once and checks it again at ``COMMIT``
  (a deferred constraint trigger, under a share lock on the lease row), so a deposed
  leader's write is refused atomically with the write itself
  (:class:`~orchestratord.store.FencedOut`). A batch holding a refused fenced write is
  retried write by write, so only that write fails.
* ``seq`` (admission order) is an identity column: a new row gets the next value, an upsert
  of an existing row keeps its value (the sequence may have gaps). Every query is
  parameterised.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from orchestratord.store import (
    JOB_COLUMNS,
    DuplicateTerminalEvent,
    FencedOut,
    JobFilter,
    JobPage,
    JobRow,
    PolicyRecord,
    PoolRecord,
    StoredEvent,
    StoreUnavailable,
    row_from_mapping,
    row_values,
)

__all__ = ["FENCE_SQL", "FENCED_SQLSTATE", "MIGRATION_LOCK", "MIGRATIONS", "Fence", "PostgresStore"]

Fence = tuple[str, str, int]
"""A fencing token: (lease name, holder, epoch) — see :mod:`orchestratord.leadership`."""

FENCE_SQL: LiteralString = "SELECT llorch_fence(%s, %s, %s)"
"""Run in a transaction, it makes the transaction commit only if the fence's epoch is still
the lease's current one at COMMIT (else the statement, or the COMMIT, raises SQLSTATE
:data:`FENCED_SQLSTATE` and nothing is applied)."""

FENCED_SQLSTATE = "LF001"
"""The SQLSTATE ``llorch_fence`` raises for a stale epoch."""

MIGRATION_LOCK = 0x6C6C616D616F7263
"""Key of the transaction-level advisory lock that serialises migrations ("llamaorc")."""

MIGRATIONS: list[tuple[int, LiteralString]] = [
    (
        1,
        """
        CREATE TABLE jobs (
            seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id         TEXT NOT NULL UNIQUE,
            model_ref      TEXT NOT NULL,
            prompt         TEXT,
            prompt_hash    TEXT NOT NULL,
            params         TEXT NOT NULL,
            priority       TEXT NOT NULL,
            status         TEXT NOT NULL,
            session_id     TEXT,
            tenant_id      TEXT,
            created_at     DOUBLE PRECISION NOT NULL,
            queued_at      DOUBLE PRECISION NOT NULL,
            started_at     DOUBLE PRECISION,
            finished_at    DOUBLE PRECISION,
            attempts       INTEGER NOT NULL DEFAULT 0,
            pool_id        TEXT,
            worker_id      TEXT,
            worker_uri     TEXT,
            error_code     TEXT,
            error_message  TEXT,
            timeout_s      DOUBLE PRECISION NOT NULL,
            tokens         INTEGER NOT NULL DEFAULT 0,
            first_token_at DOUBLE PRECISION,
            correlation_id TEXT,
            kind           TEXT NOT NULL DEFAULT 'task'
        );
        CREATE INDEX jobs_unfinished ON jobs (seq) WHERE status IN ('queued', 'running');
        CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
        CREATE INDEX jobs_session ON jobs (session_id, seq);
        CREATE INDEX jobs_tenant ON jobs (tenant_id, seq);
        CREATE TABLE events (
            job_id    TEXT NOT NULL,
            event_id  INTEGER NOT NULL,
            kind      TEXT NOT NULL,
            data      TEXT NOT NULL,
            PRIMARY KEY (job_id, event_id)
        );
        CREATE UNIQUE INDEX events_one_terminal ON events (job_id)
            WHERE kind IN ('end', 'error');
        """,
    ),
    (
        2,
        # The leader lease (orchestratord.leadership): one row per lease name. Every time
        # is the database's clock; ``epoch`` grows by one on every acquisition and fences
        # the leader's writes through llorch_fence() (docs/design/persistence.md).
        """
        CREATE TABLE leader_lease (
            name        TEXT PRIMARY KEY,
            holder      TEXT,
            epoch       BIGINT NOT NULL,
            expires_at  TIMESTAMPTZ,
            renewed_at  TIMESTAMPTZ
        );
        -- A fenced transaction calls llorch_fence() first: it fails fast on a stale epoch
        -- and files a claim whose deferred constraint trigger checks the epoch again AT
        -- COMMIT, under a share lock on the lease row. The lock is taken and released
        -- inside the server's COMMIT processing, so a writer paused mid-transaction
        -- (SIGSTOP) holds no lock that would block a takeover; and a takeover either
        -- commits before that check (the write is refused) or waits for the commit.
        CREATE UNLOGGED TABLE leader_fence_claims (
            id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name    TEXT NOT NULL,
            holder  TEXT NOT NULL,
            epoch   BIGINT NOT NULL
        );
        CREATE FUNCTION llorch_fence_check(p_name TEXT, p_holder TEXT, p_epoch BIGINT,
                                           p_lock BOOLEAN)
        RETURNS VOID LANGUAGE plpgsql AS $check$
        BEGIN
            IF p_lock THEN
                PERFORM 1 FROM leader_lease
                    WHERE name = p_name AND holder = p_holder AND epoch = p_epoch FOR SHARE;
            ELSE
                PERFORM 1 FROM leader_lease
                    WHERE name = p_name AND holder = p_holder AND epoch = p_epoch;
            END IF;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'fenced out: lease % epoch % of % is not current',
                    p_name, p_epoch, p_holder
                    USING ERRCODE = 'LF001';
            END IF;
        END
        $check$;
        CREATE FUNCTION llorch_fence_at_commit() RETURNS TRIGGER LANGUAGE plpgsql AS $trg$
        BEGIN
            PERFORM llorch_fence_check(NEW.name, NEW.holder, NEW.epoch, TRUE);
            DELETE FROM leader_fence_claims WHERE id = NEW.id;
            RETURN NULL;
        END
        $trg$;
        CREATE CONSTRAINT TRIGGER leader_fence_claims_at_commit
            AFTER INSERT ON leader_fence_claims DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION llorch_fence_at_commit();
        CREATE FUNCTION llorch_fence(p_name TEXT, p_holder TEXT, p_epoch BIGINT)
        RETURNS VOID LANGUAGE plpgsql AS $fence$
        BEGIN
            PERFORM llorch_fence_check(p_name, p_holder, p_epoch, FALSE);
            INSERT INTO leader_fence_claims (name, holder, epoch)
                VALUES (p_name, p_holder, p_epoch);
        END
        $fence$;
        """,
    ),
    (
        3,
        # Applied scheduler policies (one row per version; the highest is active) and the
        # pools' last inventory (for views after a takeover, until they heartbeat again).
        """
        CREATE TABLE scheduler_policies (
            version      BIGINT PRIMARY KEY,
            policy       TEXT NOT NULL,
            placement    TEXT NOT NULL,
            script       TEXT,
            rules        TEXT,
            applied_at   DOUBLE PRECISION NOT NULL,
            applied_by   TEXT NOT NULL DEFAULT '',
            fingerprint  TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE pools (
            pool_id         TEXT PRIMARY KEY,
            inventory       TEXT NOT NULL,
            last_heartbeat  DOUBLE PRECISION NOT NULL,
            token           TEXT NOT NULL DEFAULT ''
        );
        """,
    ),
]
"""Versioned schema migrations, applied in order. Append; never edit a released one."""

_JOB_COLUMNS = JOB_COLUMNS
# Column names below are constants of this module, never input: the f-strings are safe.
_COLS = ", ".join(_JOB_COLUMNS)
_PARAMS = ", ".join(f"%({c})s" for c in _JOB_COLUMNS)
_SETS = ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMNS if c != "job_id")
_UPSERT: LiteralString = (
    f"INSERT INTO jobs ({_COLS}) VALUES ({_PARAMS}) ON CONFLICT (job_id) DO UPDATE SET {_SETS}"  # noqa: S608
)
_INSERT_EVENT: LiteralString = (
    "INSERT INTO events (job_id, event_id, kind, data) VALUES (%s, %s, %s, %s)"
)
_SELECT_JOB: LiteralString = f"SELECT seq, {_COLS} FROM jobs"  # noqa: S608
_ONE_TERMINAL = "events_one_terminal"
_KEY_DETAIL = re.compile(r"\(job_id\)=\((?P<job_id>.*)\) already exists")
_FILTER_COLUMNS: list[tuple[LiteralString, str]] = [
    ("status", "status"),
    ("priority", "priority"),
    ("session_id", "session_id"),
    ("tenant_id", "tenant_id"),
    ("model_ref", "model"),
]


@dataclass(slots=True)
class _Write:
    jobs: list[dict[str, Any]]
    events: list[tuple[str, int, str, str]]
    terminal_jobs: list[str]
    durable: bool
    future: asyncio.Future[None]
    fence: Fence | None = None


class PostgresStore:
    """PostgreSQL :class:`~orchestratord.store.Store` at ``dsn`` (see the module docstring).

    ``dsn`` is a libpq connection string or URI (``postgresql://user:pw@host:5432/db``).
    ``max_batch`` bounds a group commit; ``read_pool_size`` is the most reader connections.
    """

    def __init__(self, dsn: str, *, max_batch: int = 512, read_pool_size: int = 4) -> None:
        self.dsn = dsn
        self.max_batch = max_batch
        self.read_pool_size = read_pool_size
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._wconn: psycopg.AsyncConnection[Any] | None = None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self.commits = 0
        """Transactions committed by the writer (a group commit counts once)."""
        self.term_fence: Fence | None = None
        """The fence of every commit that passes none: set by a daemon when it becomes the
        leader (its term's token) and kept after it steps down, so that any write still
        made by its old term is refused."""

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, apply migrations, open the read pool and start the writer."""
        conn = await self._connect()
        try:
            await migrate(conn)
            pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=max(1, self.read_pool_size),
                kwargs={"autocommit": True},
                check=AsyncConnectionPool.check_connection,  # survive a server restart
                open=False,
                name="orchestratord-read",
            )
            await pool.open(wait=True, timeout=30.0)
        except BaseException:
            await conn.close()
            raise
        self._wconn = conn
        self._pool = pool
        self._queue = asyncio.Queue()  # bound to this loop
        self._writer = asyncio.create_task(self._write_loop(), name="postgres-writer")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    async def schema_version(self) -> int:
        """The highest applied migration."""
        async with self._read() as conn:
            cur = await conn.execute("SELECT MAX(version) FROM schema_version")
            row = await cur.fetchone()
        return int(row[0] or 0) if row is not None else 0

    async def close(self) -> None:
        """Finish pending writes, stop the writer, close the connection and the pool."""
        if self._writer is not None:
            await self._queue.put(None)
            # The writer drains what is queued before the stop; if it was cancelled, there
            # is nothing left to wait for.
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._wconn is not None:
            await self._wconn.close()
            self._wconn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- writes --------------------------------------------------------------------------

    async def commit(
        self,
        *,
        jobs: Sequence[JobRow] = (),
        events: Sequence[StoredEvent] = (),
        durable: bool = True,
        unfenced: bool = False,
        fence: Fence | None = None,
    ) -> None:
        """See :meth:`orchestratord.store.Store.commit` (group-committed by the writer).

        With ``fence`` (a leader's ``(lease name, holder, epoch)``, from
        :meth:`orchestratord.leadership.PostgresLease.fence`), the transaction first checks
        — and share-locks — the lease row: the write commits only if that epoch is still
        the current one, else nothing is applied and :class:`~orchestratord.store.FencedOut`
        is raised. Without it the write carries :attr:`term_fence` (unfenced when that is
        ``None``: a store no daemon leads with); ``unfenced=True`` writes without a fence
        (a submission, which any daemon may store). A database that cannot be reached raises
        :class:`~orchestratord.store.StoreUnavailable`."""
        if self._writer is None or self._writer.done():
            raise RuntimeError("PostgresStore is not open")
        # Serialise now: the rows may change after we return.
        write = _Write(
            jobs=[row_values(r) for r in jobs],
            events=[(e.job_id, e.event_id, e.kind, e.data) for e in events],
            terminal_jobs=[e.job_id for e in events if e.terminal],
            durable=durable,
            future=asyncio.get_running_loop().create_future(),
            fence=None if unfenced else fence if fence is not None else self.term_fence,
        )
        self._queue.put_nowait(write)
        await write.future

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._apply(batch)

    async def _apply(self, batch: list[_Write]) -> None:
        try:
            await self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                _resolve(batch[0].future, exc)
                return
            for w in batch:
                try:
                    await self._transaction([w])
                except Exception as one:
                    _resolve(w.future, one)
                else:
                    _resolve(w.future, None)
        except BaseException as exc:  # cancelled: nobody must wait forever
            for w in batch:
                _resolve(w.future, exc)
            raise
        else:
            for w in batch:
                _resolve(w.future, None)

    async def _transaction(self, batch: list[_Write]) -> None:
        try:
            await self._transaction_once(batch)
        except (psycopg.OperationalError, OSError) as exc:
            if isinstance(exc, psycopg.Error) and exc.sqlstate == FENCED_SQLSTATE:
                raise
            raise StoreUnavailable(f"the database cannot be reached: {exc}") from exc

    async def _transaction_once(self, batch: list[_Write]) -> None:
        conn = self._wconn
        if conn is None or conn.closed or conn.broken:  # e.g. after a server restart
            if conn is not None:
                await conn.close()
            self._wconn = conn = await self._connect()
        jobs = [j for w in batch for j in w.jobs]
        events = [e for w in batch for e in w.events]
        fences = sorted({w.fence for w in batch if w.fence is not None})
        try:
            # Pipeline mode: BEGIN, the statements and COMMIT go out without waiting for
            # each other's replies (one round trip for the whole batch).
            async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                if not any(w.durable for w in batch):
                    await cur.execute("SET LOCAL synchronous_commit = off")
                for fence in fences:  # checked now and again at COMMIT
                    await cur.execute(FENCE_SQL, fence)
                if jobs:
                    await cur.executemany(_UPSERT, jobs)
                if events:
                    await cur.executemany(_INSERT_EVENT, events)
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name != _ONE_TERMINAL:
                raise
            found = _KEY_DETAIL.search(exc.diag.message_detail or "")
            job_id = found["job_id"] if found else next(iter(batch[0].terminal_jobs), "")
            raise DuplicateTerminalEvent(job_id) from exc
        except psycopg.Error as exc:
            if exc.sqlstate != FENCED_SQLSTATE:
                raise
            raise FencedOut(exc.diag.message_primary or str(exc)) from exc
        self.commits += 1

    # -- reads ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        try:
            async with self._pool.connection(timeout=5.0) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
            raise StoreUnavailable(f"the database cannot be reached: {exc}") from exc

    async def _fetch_jobs(self, sql: LiteralString, args: Sequence[Any] = ()) -> list[JobRow]:
        async with self._read() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, args)
            rows = await cur.fetchall()
        return [row_from_mapping(r) for r in rows]

    async def get_job(self, job_id: str) -> JobRow | None:
        """See :meth:`orchestratord.store.Store.get_job`."""
        rows = await self._fetch_jobs(_SELECT_JOB + " WHERE job_id = %s", (job_id,))
        return rows[0] if rows else None

    async def list_jobs(self, flt: JobFilter, *, limit: int, before: int | None) -> JobPage:
        """See :meth:`orchestratord.store.Store.list_jobs`."""
        where: list[LiteralString] = []
        args: list[Any] = []
        for column, attr in _FILTER_COLUMNS:
            value = getattr(flt, attr)
            if value is not None:
                where.append(column + " = %s")
                args.append(value)
        if before is not None:
            where.append("seq < %s")
            args.append(before)
        sql = _SELECT_JOB + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY seq DESC LIMIT %s"
        args.append(limit + 1)
        rows = await self._fetch_jobs(sql, args)
        out = rows[:limit]
        return JobPage(out, out[-1].seq if len(rows) > limit and out else None)

    async def unfinished_jobs(self) -> list[JobRow]:
        """See :meth:`orchestratord.store.Store.unfinished_jobs`."""
        return await self._fetch_jobs(
            _SELECT_JOB + " WHERE status IN ('queued', 'running') ORDER BY seq"
        )

    async def unfinished_ids(self) -> list[str]:
        """See :meth:`orchestratord.store.Store.unfinished_ids`."""
        async with self._read() as conn:
            cur = await conn.execute(
                "SELECT job_id FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq"
            )
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def queued_count(self) -> int:
        """See :meth:`orchestratord.store.Store.queued_count`."""
        async with self._read() as conn:
            cur = await conn.execute("SELECT count(*) FROM jobs WHERE status = 'queued'")
            row = await cur.fetchone()
        return int(row[0]) if row is not None else 0

    async def events_after(self, job_id: str, after: int) -> list[StoredEvent]:
        """See :meth:`orchestratord.store.Store.events_after`."""
        sql: LiteralString = (
            "SELECT job_id, event_id, kind, data FROM events "
            "WHERE job_id = %s AND event_id > %s ORDER BY event_id"
        )
        async with self._read() as conn:
            cur = await conn.execute(sql, (job_id, after))
            rows = await cur.fetchall()
        return [StoredEvent(r[0], int(r[1]), r[2], r[3]) for r in rows]

    async def last_event_id(self, job_id: str) -> int:
        """See :meth:`orchestratord.store.Store.last_event_id`."""
        async with self._read() as conn:
            cur = await conn.execute(
                "SELECT MAX(event_id) FROM events WHERE job_id = %s", (job_id,)
            )
            row = await cur.fetchone()
        return int(row[0] or 0) if row is not None else 0

    async def purge_results(self, finished_before: float) -> int:
        """See :meth:`orchestratord.store.Store.purge_results` (one autocommit ``DELETE`` on
        a reader connection)."""
        sql: LiteralString = (
            "DELETE FROM events WHERE kind IN ('token', 'metrics') AND job_id IN "
            "(SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < %s)"
        )
        async with self._read() as conn:
            cur = await conn.execute(sql, (finished_before,))
            return max(cur.rowcount, 0)

    # -- scheduler policies and pool inventory ---------------------------------------------

    async def _write_aside(
        self, statements: Sequence[tuple[LiteralString, Sequence[Sequence[Any]]]], *, durable: bool
    ) -> None:
        """Run ``statements`` (each with its rows of arguments) in one transaction on a
        pooled connection, fenced with :attr:`term_fence` like a commit: rare writes that
        need not join the job writer's group commits."""
        async with self._read() as conn:  # it turns a lost connection into StoreUnavailable
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    if not durable:
                        await cur.execute("SET LOCAL synchronous_commit = off")
                    if self.term_fence is not None:  # checked now and again at COMMIT
                        await cur.execute(FENCE_SQL, self.term_fence)
                    for sql, rows in statements:
                        if rows:
                            await cur.executemany(sql, rows)
            except psycopg.Error as exc:
                if exc.sqlstate != FENCED_SQLSTATE:
                    raise
                raise FencedOut(exc.diag.message_primary or str(exc)) from exc

    async def save_policy(self, record: PolicyRecord) -> None:
        """See :meth:`orchestratord.store.Store.save_policy` (committed with the server's
        ``synchronous_commit``, fenced with :attr:`term_fence`)."""
        sql: LiteralString = (
            "INSERT INTO scheduler_policies (version, policy, placement, script, rules, "
            "applied_at, applied_by, fingerprint) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
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
        await self._write_aside([(sql, [values])], durable=True)

    async def active_policy(self) -> PolicyRecord | None:
        """See :meth:`orchestratord.store.Store.active_policy`."""
        async with self._read() as conn:
            cur = await conn.execute(PolicyRecord.LATEST_SQL)
            r = await cur.fetchone()
        if r is None:
            return None
        return PolicyRecord.of_row(r)

    async def save_pools(self, pools: Sequence[PoolRecord], removed: Sequence[str] = ()) -> None:
        """See :meth:`orchestratord.store.Store.save_pools` (``synchronous_commit = off``,
        fenced with :attr:`term_fence`)."""
        upsert: LiteralString = (
            "INSERT INTO pools (pool_id, inventory, last_heartbeat, token) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (pool_id) DO UPDATE SET "
            "inventory = excluded.inventory, last_heartbeat = excluded.last_heartbeat, "
            "token = excluded.token"
        )
        await self._write_aside(
            [
                (upsert, [(p.pool_id, p.inventory, p.last_heartbeat, p.token) for p in pools]),
                ("DELETE FROM pools WHERE pool_id = %s", [(pool_id,) for pool_id in removed]),
            ],
            durable=False,
        )

    async def load_pools(self) -> list[PoolRecord]:
        """See :meth:`orchestratord.store.Store.load_pools`."""
        async with self._read() as conn:
            cur = await conn.execute(
                "SELECT pool_id, inventory, last_heartbeat, token FROM pools ORDER BY pool_id"
            )
            rows = await cur.fetchall()
        return [PoolRecord(r[0], r[1], float(r[2]), r[3]) for r in rows]


async def migrate(conn: psycopg.AsyncConnection[Any]) -> int:
    """Apply the missing :data:`MIGRATIONS` on ``conn`` (in autocommit mode) in one
    transaction under :data:`MIGRATION_LOCK`; return the schema version reached."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_version")
        done = {int(r[0]) for r in await cur.fetchall()}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            done.add(version)
    return max(done, default=0)


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
