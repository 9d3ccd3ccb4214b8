"""Cross-daemon messages over PostgreSQL ``LISTEN``/``NOTIFY`` (several daemons, one database).

The leader relays every job; followers serve SSE for any job and must hear of each event as
it is published. :class:`PgBus` carries two channels:

* :data:`JOBS_CHANNEL` (``llorch_jobs``) — payload: a job id. "Look at this job": it was
  admitted, or a cancel was requested, on some instance (the receiver reads the store).
* :data:`EVENTS_CHANNEL` (``llorch_events``) — payload: one event of a job, compact JSON
  ``{"j": job_id, "i": event_id, "k": kind, "d": data}`` (:func:`encode_event`). PostgreSQL
  refuses payloads of 8000 bytes or more: a bigger event is sent without ``"d"`` and the
  receiver reads it from the store once it is stored (:func:`decode_event` gives
  ``data=None``).

**Delivery.** ``NOTIFY`` is best effort for us: a listener that is disconnected misses what
was sent meanwhile, and :meth:`PgBus.publish_events` drops events when its queue is full.
Receivers must therefore treat notifications as hints and recover from the store: every
notification is idempotent (a job id to look at; an event whose id says where it goes), and
after every reconnection of the listening connection the bus calls the
:meth:`PgBus.on_resync` callbacks (notifications may have been missed: re-read the store).
Within one connection PostgreSQL delivers notifications in the order they were sent (one
transaction's in statement order, transactions in commit order), so the events of one
publisher arrive in the order it published them.

**Connections.** One dedicated autocommit connection ``LISTEN``\\s on the channels; its
task yields to callbacks as notifications arrive, pings the server when idle
(``SELECT 1`` every ``ping_s``) and reconnects with exponential backoff when the connection
breaks (a server restart, ``pg_terminate_backend``), then calls the resync callbacks. A
second connection sends: :meth:`PgBus.notify` (awaited) and the event queue.

**Publishing events is fire-and-forget.** :meth:`PgBus.publish_events` only appends to a
bounded in-memory queue and returns (no I/O, no await: the leader's relay calls it for every
batch of events it publishes). A background task drains the queue: everything pending (up to
``max_batch``) goes out in **one statement** — ``SELECT pg_notify(channel, p) FROM
unnest(payloads)``, one round trip, one transaction, delivered in array order. When the queue
is full (the database is slow or unreachable) a new non-terminal event is dropped and
counted (:attr:`PgBus.dropped`); terminal events are always queued (one per job: the queue
stays bounded by the number of jobs), since they tell receivers that the store is complete.
A batch that fails because the connection broke is sent again on a new connection (a
receiver ignores what it already has); one the server refuses is dropped and counted.

Callbacks (:meth:`PgBus.on`, :meth:`PgBus.on_resync`) are plain functions called on the
event loop, one at a time, in arrival order; they must not block (start a task for I/O). An
exception in one is logged and does not stop the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, LiteralString

import orjson
import psycopg
from psycopg import sql

from orchestratord.store import TERMINAL_KINDS, StoredEvent

__all__ = [
    "EVENTS_CHANNEL",
    "JOBS_CHANNEL",
    "MAX_PAYLOAD_BYTES",
    "EventNote",
    "PgBus",
    "decode_event",
    "encode_event",
]

log = logging.getLogger("orchestratord.pg_bus")

JOBS_CHANNEL = "llorch_jobs"
"""Payload: a job id — admitted, or a cancel was requested, on some instance."""

EVENTS_CHANNEL = "llorch_events"
"""Payload: one job event (:func:`encode_event`)."""

MAX_PAYLOAD_BYTES = 7999
"""The largest ``NOTIFY`` payload PostgreSQL accepts (it must be shorter than 8000 bytes in
the server encoding; the database is expected to be UTF-8)."""

_NOTIFY: LiteralString = "SELECT pg_notify(%s, %s)"
_NOTIFY_MANY: LiteralString = "SELECT count(pg_notify(%s, p)) FROM unnest(%s::text[]) AS t(p)"


@dataclass(frozen=True, slots=True)
class EventNote:
    """A decoded :data:`EVENTS_CHANNEL` payload: an event, with ``data=None`` when it was too
    big to send (read it from the store)."""

    job_id: str
    event_id: int
    kind: str
    data: str | None

    @property
    def terminal(self) -> bool:
        """True for ``end`` and ``error``."""
        return self.kind in TERMINAL_KINDS

    def event(self) -> StoredEvent | None:
        """The event, or ``None`` without its data."""
        if self.data is None:
            return None
        return StoredEvent(self.job_id, self.event_id, self.kind, self.data)


def encode_event(event: StoredEvent) -> str:
    """``event`` as an :data:`EVENTS_CHANNEL` payload: ``{"j", "i", "k", "d"}``, or without
    ``"d"`` when that would reach :data:`MAX_PAYLOAD_BYTES`. Raises ``ValueError`` when even
    that is too big (a job id of thousands of bytes)."""
    head = {"j": event.job_id, "i": event.event_id, "k": event.kind}
    full = orjson.dumps({**head, "d": event.data})
    if len(full) <= MAX_PAYLOAD_BYTES:
        return full.decode()
    short = orjson.dumps(head)
    if len(short) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"job {event.job_id[:40]}…: the event cannot be notified")
    return short.decode()


def decode_event(payload: str) -> EventNote:
    """Parse an :data:`EVENTS_CHANNEL` payload; ``ValueError`` if it is not one."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not an event payload: {payload[:80]!r}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"not an event payload: {payload[:80]!r}")
    job_id, event_id, kind, data = obj.get("j"), obj.get("i"), obj.get("k"), obj.get("d")
    if (
        not isinstance(job_id, str)
        or not isinstance(event_id, int)
        or isinstance(event_id, bool)
        or event_id < 1
        or not isinstance(kind, str)
        or not (data is None or isinstance(data, str))
    ):
        raise ValueError(f"not an event payload: {payload[:80]!r}")
    return EventNote(job_id, event_id, kind, data)


class PgBus:
    """``LISTEN``/``NOTIFY`` between the daemons sharing the database at ``dsn`` (see the
    module docstring).

    Register callbacks with :meth:`on` / :meth:`on_resync` (before or after :meth:`start`;
    channels other than :data:`JOBS_CHANNEL` and :data:`EVENTS_CHANNEL` must be registered
    before :meth:`start`), then ``await start()`` (returns once listening: nothing sent after
    that is missed unless the connection breaks), and ``await close()`` at the end.

    ``max_pending`` bounds the queue of events to publish, ``max_batch`` the events per
    statement; ``ping_s`` is how often an idle listening connection is checked;
    ``reconnect_max_s`` caps the reconnection backoff; ``name`` goes into the connections'
    ``application_name`` (``orchestratord-bus-listen <name>``, ``orchestratord-bus-notify
    <name>``).
    """

    def __init__(
        self,
        dsn: str,
        *,
        name: str = "orchestratord",
        max_pending: int = 100_000,
        max_batch: int = 1_000,
        ping_s: float = 10.0,
        statement_timeout_s: float = 5.0,
        reconnect_max_s: float = 5.0,
    ) -> None:
        if max_pending < 1 or max_batch < 1:
            raise ValueError("max_pending and max_batch must be positive")
        self.dsn = dsn
        self.name = name
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.ping_s = ping_s
        self.statement_timeout_s = statement_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.channels: list[str] = [JOBS_CHANNEL, EVENTS_CHANNEL]
        self._callbacks: dict[str, list[Callable[[str], None]]] = {}
        self._resync: list[Callable[[], None]] = []
        self._lconn: psycopg.AsyncConnection[Any] | None = None
        self._nconn: psycopg.AsyncConnection[Any] | None = None
        self._nlock = asyncio.Lock()
        self._pending: deque[StoredEvent] = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._enqueued = 0
        self._settled = 0
        self._listener: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        """True while the listening connection is up (``LISTEN`` done)."""
        self.reconnects = 0
        """Listening connections opened after the first one."""
        self.received = 0
        """Notifications received (on every channel)."""
        self.sent = 0
        """Events notified (acknowledged by the server)."""
        self.batches = 0
        """Statements that sent queued events."""
        self.dropped = 0
        """Events never sent: queue full, refused by the server, too big, or closing."""
        self.callback_errors = 0
        """Exceptions raised by callbacks (logged)."""

    # -- registration --------------------------------------------------------------------

    def on(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for every notification on ``channel``."""
        if channel not in self.channels:
            if self._listener is not None:
                raise ValueError(f"channel {channel!r} must be registered before start()")
            self.channels.append(channel)
        self._callbacks.setdefault(channel, []).append(callback)

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each reconnection of the listening connection (once it
        listens again): notifications sent while it was down are lost."""
        self._resync.append(callback)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and ``LISTEN`` (raises if the database cannot be reached), then run the
        listening and publishing tasks."""
        if self._listener is not None:
            return
        self._closing = False
        self._wake = asyncio.Event()  # bound to this loop
        self._progress = asyncio.Event()
        self._nlock = asyncio.Lock()
        self._lconn = await self._connect_listener()
        self.connected = True
        self._listener = asyncio.create_task(self._listen_loop(), name="pg-bus-listen")
        self._drainer = asyncio.create_task(self._drain_loop(), name="pg-bus-notify")

    async def close(self, *, flush_timeout_s: float = 2.0) -> None:
        """Send what is queued (for at most ``flush_timeout_s``), stop the tasks and close
        both connections. What could not be sent is counted in :attr:`dropped`."""
        if self._drainer is not None and not self._drainer.done() and flush_timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await self.flush(timeout_s=flush_timeout_s)
        self._closing = True
        for task in (self._listener, self._drainer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._drainer = None
        self.dropped += len(self._pending)
        self._settled += len(self._pending)
        self._pending.clear()
        self.connected = False
        for conn in (self._lconn, self._nconn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._lconn = self._nconn = None

    # -- sending -------------------------------------------------------------------------

    async def notify(self, channel: str, payload: str) -> None:
        """``NOTIFY channel, payload`` now (awaited; raises on failure after one retry on a
        fresh connection). ``payload`` must be shorter than 8000 bytes."""
        if len(payload.encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError("NOTIFY payload too long")
        for attempt in (1, 2):
            try:
                await self._execute(_NOTIFY, (channel, payload))
                return
            except (psycopg.OperationalError, OSError, TimeoutError):
                if attempt == 2 or self._closing:
                    raise

    def publish_event(self, event: StoredEvent) -> bool:
        """Queue ``event`` for :data:`EVENTS_CHANNEL` (see :meth:`publish_events`)."""
        return self.publish_events((event,)) == 1

    def publish_events(self, events: Iterable[StoredEvent]) -> int:
        """Queue ``events`` for :data:`EVENTS_CHANNEL`, in order, and return at once (no
        I/O); the number queued. A non-terminal event is dropped (and counted in
        :attr:`dropped`) when ``max_pending`` are already waiting or the bus is not
        running; a terminal one is always queued while it runs."""
        running = self._drainer is not None and not self._closing
        queued = 0
        for event in events:
            if not running or (len(self._pending) >= self.max_pending and not event.terminal):
                self.dropped += 1
                continue
            self._pending.append(event)
            queued += 1
        if queued:
            self._enqueued += queued
            self._wake.set()
        return queued

    @property
    def pending(self) -> int:
        """Events queued and not sent yet."""
        return len(self._pending)

    async def flush(self, *, timeout_s: float | None = None) -> None:
        """Until every event queued before this call was sent (or dropped)."""
        target = self._enqueued

        async def settled() -> None:
            while self._settled < target:
                self._progress.clear()
                await self._progress.wait()

        await asyncio.wait_for(settled(), timeout_s)

    async def _drain_loop(self) -> None:
        backoff = 0.0
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(len(self._pending), self.max_batch)
            batch = [self._pending[i] for i in range(n)]
            payloads: list[str] = []
            for event in batch:
                try:
                    payloads.append(encode_event(event))
                except ValueError:
                    self.dropped += 1
            try:
                if payloads:
                    await self._execute(_NOTIFY_MANY, (EVENTS_CHANNEL, payloads))
                    self.sent += len(payloads)
                    self.batches += 1
            except (psycopg.Error, OSError, TimeoutError) as exc:
                conn = self._nconn
                if conn is not None and not conn.broken and not conn.closed:
                    # The server answered with an error (e.g. its notification queue is
                    # full): this batch will not go through. Drop it.
                    log.warning("bus.notify_refused", extra={"error": repr(exc), "events": n})
                    self.dropped += len(payloads)
                else:  # the connection broke: send the same batch again on a new one
                    backoff = min(self.reconnect_max_s, max(0.05, backoff * 2))
                    log.warning(
                        "bus.notify_failed", extra={"error": repr(exc), "retry_in_s": backoff}
                    )
                    await asyncio.sleep(backoff)
                    continue
            backoff = 0.0
            for _ in range(n):
                self._pending.popleft()
            self._settled += n
            self._progress.set()

    async def _execute(self, query: LiteralString, params: tuple[Any, ...]) -> None:
        async with self._nlock:
            conn = self._nconn
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                self._nconn = None
                conn = await self._connect("notify")
                self._nconn = conn
            try:
                await asyncio.wait_for(conn.execute(query, params), self.statement_timeout_s + 1)
            except TimeoutError:
                self._nconn = None
                with contextlib.suppress(Exception):
                    await conn.close()
                raise

    # -- listening -----------------------------------------------------------------------

    async def _connect(self, role: str) -> psycopg.AsyncConnection[Any]:
        ms = max(1, int(self.statement_timeout_s * 1000))
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, int(self.statement_timeout_s)),
                options=f"-c statement_timeout={ms}",
                application_name=f"orchestratord-bus-{role} {self.name}"[:63],
                keepalives=1,
                keepalives_idle=max(1, int(self.ping_s)),
                keepalives_interval=max(1, int(self.ping_s / 3)),
                keepalives_count=3,
            ),
            timeout=self.statement_timeout_s + 1,
        )

    async def _connect_listener(self) -> psycopg.AsyncConnection[Any]:
        conn = await self._connect("listen")
        try:
            for channel in self.channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen_loop(self) -> None:
        backoff = 0.0
        while True:
            try:
                conn = self._lconn
                if conn is None or conn.closed or conn.broken:
                    await self._drop_listener()
                    conn = await self._connect_listener()
                    self._lconn = conn
                    self.connected = True
                    self.reconnects += 1
                    log.info("bus.reconnected", extra={"reconnects": self.reconnects})
                    for resync in list(self._resync):
                        self._call(resync)
                backoff = 0.0
                while True:
                    async for note in conn.notifies(timeout=self.ping_s):
                        self.received += 1
                        for cb in self._callbacks.get(note.channel, ()):
                            self._call(cb, note.payload)
                    # Idle for ping_s: is the server still there? (Notifications that come
                    # meanwhile wait in the connection's backlog.)
                    await asyncio.wait_for(conn.execute("SELECT 1"), self.statement_timeout_s)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self.connected = False
                await self._drop_listener()
                backoff = min(self.reconnect_max_s, max(0.05, backoff * 2))
                log.warning("bus.listen_failed", extra={"error": repr(exc), "retry_in_s": backoff})
                await asyncio.sleep(backoff)

    async def _drop_listener(self) -> None:
        conn, self._lconn = self._lconn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _call(self, callback: Callable[..., None], *args: str) -> None:
        try:
            callback(*args)
        except Exception:
            self.callback_errors += 1
            log.exception("bus.callback_failed")
