"""Leader election on PostgreSQL: a lease with a fencing epoch.

Several ``orchestratord`` processes with the same configuration share one database; exactly
one of them — the leader — runs the scheduling loop, dispatch, retries, timeouts and pool
bookkeeping. PostgreSQL is the consensus engine: no protocol of our own, only atomic
statements on one row of ``leader_lease`` (migration 2 of
:data:`orchestratord.postgres_store.MIGRATIONS`).

**The lease** (``name``, ``holder``, ``epoch``, ``expires_at``, ``renewed_at``). Every time
in it is the *database's* clock (``clock_timestamp()``), never a daemon's, so the daemons'
clocks may disagree freely.

* :meth:`PostgresLease.try_acquire` is one ``INSERT … ON CONFLICT DO UPDATE … WHERE the lease
  expired OR its holder is me … RETURNING epoch``: it takes the lease only if it is free,
  and every acquisition increments ``epoch`` (a new holder, or the same one coming back
  after it lost it).
* :meth:`PostgresLease.renew` is one ``UPDATE … WHERE holder = me AND epoch = my epoch AND
  expires_at > clock_timestamp()``: no row means the lease was lost — step down at once.
* :meth:`PostgresLease.release` (clean shutdown) clears the holder and expires the lease
  now, so a follower takes over at its next attempt instead of after the TTL.

**The local deadline.** Before sending an acquire or a renew the daemon reads its monotonic
clock (``t0``); when the statement succeeds, the database's expiry is at least ``t0 + ttl``
in real time, so the daemon considers itself leader only until ``t0 + ttl - margin``
(:meth:`PostgresLease.is_leader`). Past it, it stops acting even if it cannot reach the
database. A process paused (SIGSTOP, a long GC, a VM freeze) wakes up *after* its deadline:
``is_leader()`` is false at once, whatever it believed before the pause.

**Fencing.** The local deadline cannot stop a write that was already on its way when the
pause began. So every write only a leader may make carries the leader's fencing token
``(name, holder, epoch)`` (:meth:`PostgresLease.fence`) and is committed through
``PostgresStore.commit(..., fence=token)``: the same transaction runs
``llorch_fence(name, holder, epoch)``, which refuses a stale epoch at once (SQLSTATE
``LF001``, :class:`~orchestratord.store.FencedOut`) and files a claim checked again *at
COMMIT* by a deferred constraint trigger, under a share lock on the lease row. That lock
conflicts with a takeover's ``UPDATE``: either the takeover committed first and the COMMIT
is refused (nothing applied), or the takeover waits for the commit — no window between the
check and the write. The lock is taken and released inside the server's COMMIT processing,
so a writer paused in the middle of its transaction holds nothing that blocks a takeover.

**What is guaranteed:** at most one holder per epoch, epochs strictly increase, and once
epoch ``e + 1`` is acquired no write fenced with ``e`` or lower commits. **What is not:**
followers may believe a dead leader alive until its lease expires (up to ``ttl`` after its
last renewal, plus one ``renew_every_s`` before a follower tries again); a deposed leader
may still *believe* it leads until its local deadline (its fenced writes are refused); and
unfenced writes (submissions, reads) are not ordered with the lease at all.

**Connections.** The lease uses its own autocommit connection (never the store's writer or
pool), with ``statement_timeout``/``lock_timeout`` below the renew period and a client-side
timeout on every statement. If the connection breaks (server restart,
``pg_terminate_backend``) the loop reconnects with exponential backoff; meanwhile a leader
steps down when its local deadline passes (a timer fires then, even if the loop is stuck).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, Literal, LiteralString

import psycopg

from orchestratord.postgres_store import Fence, migrate

__all__ = ["DEFAULT_LEASE", "PostgresLease", "Role"]

log = logging.getLogger("orchestratord.leadership")

DEFAULT_LEASE = "orchestratord"
"""The lease's name: one leader per database unless configured otherwise."""

Role = Literal["leader", "follower"]

_ACQUIRE: LiteralString = """
INSERT INTO leader_lease AS l (name, holder, epoch, expires_at, renewed_at)
VALUES (%(name)s, %(me)s, 1,
        clock_timestamp() + make_interval(secs => %(ttl)s), clock_timestamp())
ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder,
        epoch = l.epoch + 1,
        expires_at = excluded.expires_at,
        renewed_at = excluded.renewed_at
    WHERE l.holder IS NULL OR l.expires_at IS NULL
       OR l.expires_at <= clock_timestamp() OR l.holder = excluded.holder
RETURNING epoch
"""
_RENEW: LiteralString = """
UPDATE leader_lease
    SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s),
        renewed_at = clock_timestamp()
    WHERE name = %(name)s AND holder = %(me)s AND epoch = %(epoch)s
      AND expires_at > clock_timestamp()
RETURNING epoch
"""
_HOLDER: LiteralString = """
SELECT holder FROM leader_lease
    WHERE name = %(name)s AND holder IS NOT NULL AND expires_at > clock_timestamp()
"""
_RELEASE: LiteralString = """
UPDATE leader_lease SET holder = NULL, expires_at = clock_timestamp()
    WHERE name = %(name)s AND holder = %(me)s AND epoch = %(epoch)s
RETURNING epoch
"""


def default_instance_id() -> str:
    """``hostname:pid:random`` — unique per process, readable in ``leader_lease.holder``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class PostgresLease:
    """A leader lease named ``name`` on the database at ``dsn`` (see the module docstring).

    Use :meth:`try_acquire` / :meth:`renew` / :meth:`release` directly, or :meth:`start` the
    loop (:meth:`run`) which tries to acquire every ``renew_every_s`` as a follower and
    renews as the leader, and watch :attr:`role`, :attr:`epoch`, :meth:`is_leader`, the
    events :attr:`became_leader` / :attr:`lost_leadership` or the callbacks.

    ``margin_s`` (default ``ttl_s / 5``) is subtracted from the lease's lifetime for the
    local deadline: it covers clock-rate differences between this host and the database and
    the time between a ``False`` from :meth:`is_leader` and the last write it allowed.
    """

    def __init__(
        self,
        dsn: str,
        *,
        name: str = DEFAULT_LEASE,
        instance_id: str | None = None,
        ttl_s: float = 3.0,
        renew_every_s: float | None = None,
        margin_s: float | None = None,
        on_elected: Callable[[int], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        migrate_schema: bool = True,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.dsn = dsn
        self.name = name
        self.instance_id = instance_id or default_instance_id()
        self.ttl_s = ttl_s
        self.renew_every_s = renew_every_s if renew_every_s is not None else ttl_s / 3
        self.margin_s = margin_s if margin_s is not None else ttl_s / 5
        if not 0 <= self.margin_s < ttl_s or not 0 < self.renew_every_s < ttl_s - self.margin_s:
            raise ValueError("need 0 <= margin_s < ttl_s and 0 < renew_every_s < ttl_s - margin_s")
        self.statement_timeout_s = min(self.renew_every_s, ttl_s / 3)
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.migrate_schema = migrate_schema
        self.became_leader = asyncio.Event()
        """Set while this instance leads (cleared when it steps down)."""
        self.lost_leadership = asyncio.Event()
        """Set when this instance stepped down (cleared when it leads again)."""
        self.role: Role = "follower"
        self.epoch: int | None = None
        """The epoch of the current (or last) term; ``None`` before the first one."""
        self.last_lost_reason: str | None = None
        self.reconnects = 0
        self.holder: str | None = None
        """Who holds the lease, as a follower last read it (``None``: nobody, or unknown)."""
        """Connections opened after the first one (the loop survived a broken one)."""
        self._deadline = 0.0  # monotonic
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._migrated = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._connects = 0

    # -- state ---------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True only while this instance holds the lease by its local deadline."""
        return self.role == "leader" and time.monotonic() < self._deadline

    def fence(self) -> Fence | None:
        """The fencing token ``(name, holder, epoch)`` to pass to a fenced commit, or
        ``None`` when this instance is not the leader (it must then not write).

        Take it once when a leader's work starts (e.g. at dispatch) and use that same token
        for every write of that work: if leadership was lost and won again meanwhile, the
        old work's writes are refused too."""
        if not self.is_leader() or self.epoch is None:
            return None
        return (self.name, self.instance_id, self.epoch)

    @property
    def deadline_in(self) -> float:
        """Seconds left before the local deadline (negative when passed or not leader)."""
        return self._deadline - time.monotonic() if self.role == "leader" else -1.0

    # -- connection ----------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        old = self._conn
        if old is not None and not old.closed and not old.broken:
            return old
        await self._drop_connection()
        ms = max(1, int(self.statement_timeout_s * 1000))
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, int(self.ttl_s)),
                options=f"-c statement_timeout={ms} -c lock_timeout={ms}",
                application_name=f"orchestratord-lease {self.instance_id}"[:63],
            ),
            timeout=max(self.ttl_s, 1.0),
        )
        if self._connects:
            self.reconnects += 1
        self._connects += 1
        self._conn = conn
        if self.migrate_schema and not self._migrated:
            await migrate(conn)
            self._migrated = True
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _one(self, sql: LiteralString, args: dict[str, Any]) -> int | None:
        """Run one statement on the lease connection (bounded in time); the first column
        of its row, or ``None`` when it returned no row. A broken or timed-out connection is
        dropped (reconnected next time) and the error raised."""
        conn = await self._connection()
        try:
            cur = await asyncio.wait_for(conn.execute(sql, args), self.statement_timeout_s + 1)
            row = await cur.fetchone()
        except (psycopg.OperationalError, TimeoutError, OSError):
            await self._drop_connection()
            raise
        return int(row[0]) if row is not None else None

    # -- the three statements ------------------------------------------------------------

    async def try_acquire(self) -> int | None:
        """Take the lease if it is free (expired, released, or already ours): one atomic
        statement that bumps the epoch. Returns the new epoch if we now lead, else
        ``None``. Raises on a database error (the caller retries)."""
        t0 = time.monotonic()  # before sending: the DB's expiry is later than t0 + ttl
        epoch = await self._one(
            _ACQUIRE, {"name": self.name, "me": self.instance_id, "ttl": self.ttl_s}
        )
        if epoch is None:
            return None
        if time.monotonic() >= t0 + self.ttl_s - self.margin_s:
            return None  # the answer took too long to be of use: let it expire
        self._elected(epoch, t0)
        return epoch

    async def renew(self) -> bool:
        """Extend our lease; ``False`` (after stepping down) when it is no longer ours or
        the local deadline passed. Raises on a database error (the caller retries; the
        local deadline still runs)."""
        if self.role != "leader" or self.epoch is None:
            return False
        if not self.is_leader():
            self._step_down("local deadline passed")
            return False
        t0 = time.monotonic()
        got = await self._one(
            _RENEW,
            {"name": self.name, "me": self.instance_id, "epoch": self.epoch, "ttl": self.ttl_s},
        )
        if got is None:
            self._step_down("lease taken over or expired")
            return False
        if self.role != "leader":  # the deadline timer fired while we waited
            return False
        self._extend(t0)
        return True

    async def read_holder(self) -> str | None:
        """Read who holds a live lease into :attr:`holder` (and return it)."""
        conn = await self._connection()
        try:
            cur = await asyncio.wait_for(
                conn.execute(_HOLDER, {"name": self.name}), self.statement_timeout_s + 1
            )
            row = await cur.fetchone()
        except (psycopg.OperationalError, TimeoutError, OSError):
            await self._drop_connection()
            raise
        self.holder = None if row is None else str(row[0])
        return self.holder

    async def release(self) -> None:
        """Give the lease up now (clean shutdown): clear the holder and expire it, so a
        follower takes over at its next attempt. Best effort: a database error leaves the
        lease to expire by itself."""
        epoch, was = self.epoch, self.role == "leader"
        if was:
            self._step_down("released")
        if epoch is None or not was:
            return
        try:
            await self._one(_RELEASE, {"name": self.name, "me": self.instance_id, "epoch": epoch})
        except (psycopg.Error, TimeoutError, OSError) as exc:
            log.warning("lease.release_failed", extra={"error": repr(exc)})

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` in a task (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"lease-{self.name}")
        return self._task

    async def close(self, *, release: bool = True) -> None:
        """Stop the loop, release the lease (unless ``release=False``: then it expires by
        itself) and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if release:
            await self.release()
        elif self.role == "leader":
            self._step_down("closed")
        self._cancel_timer()
        await self._drop_connection()

    async def run(self) -> None:
        """Follower: try to acquire every ``renew_every_s``. Leader: renew every
        ``renew_every_s``. A database error is retried with exponential backoff from
        ``renew_every_s / 4``, capped at ``renew_every_s`` for a leader and ``ttl_s`` for a
        follower (reconnecting); the local deadline keeps running meanwhile."""
        backoff = 0.0
        while True:
            try:
                if self.role == "leader":
                    await self.renew()
                elif await self.try_acquire() is None:
                    await self.read_holder()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, TimeoutError, OSError) as exc:
                cap = self.renew_every_s if self.role == "leader" else self.ttl_s
                backoff = min(cap, max(self.renew_every_s / 4, backoff * 2))
                log.warning(
                    "lease.db_error",
                    extra={"error": repr(exc), "role": self.role, "retry_in_s": backoff},
                )
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            await asyncio.sleep(self.renew_every_s)

    # -- transitions ---------------------------------------------------------------------

    def _elected(self, epoch: int, t0: float) -> None:
        was_leader, old = self.role == "leader", self.epoch
        self.epoch = epoch
        self.role = "leader"
        self.holder = self.instance_id
        self._extend(t0)
        if was_leader and old != epoch:  # a new term without noticing the loss: tell it
            self.lost_leadership.set()
            if self.on_lost is not None:
                self.on_lost("superseded by a new term")
        self.lost_leadership.clear()
        self.became_leader.set()
        log.info("lease.elected", extra={"epoch": epoch, "instance": self.instance_id})
        if self.on_elected is not None:
            self.on_elected(epoch)

    def _extend(self, t0: float) -> None:
        self._deadline = t0 + self.ttl_s - self.margin_s
        self._cancel_timer()
        delay = max(0.0, self._deadline - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self.role == "leader" and time.monotonic() >= self._deadline:
            self._step_down("local deadline passed")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _step_down(self, reason: str) -> None:
        if self.role != "leader":
            return
        self.role = "follower"
        self._deadline = 0.0
        self._cancel_timer()
        self.last_lost_reason = reason
        self.became_leader.clear()
        self.lost_leadership.set()
        log.warning(
            "lease.lost",
            extra={"epoch": self.epoch, "reason": reason, "instance": self.instance_id},
        )
        if self.on_lost is not None:
            self.on_lost(reason)
