"""A follower's SSE streams of jobs whose events another daemon (the leader) produces.

The leader publishes each job's events into its in-memory :class:`~orchestratord.streams.JobStream`
and notifies them on :data:`~orchestratord.pg_bus.EVENTS_CHANNEL`
(:meth:`~orchestratord.pg_bus.PgBus.publish_events`). A follower serves the same stream for
any job: :meth:`RemoteStreams.stream` gives a ``JobStream`` filled from the store and kept up
to date from the notifications, so clients follow it exactly as they follow a local one
(``follow_batches(last_id)``, ``Last-Event-ID`` resumes) — on any instance, without gap or
repeat.

**Sources, and what each one knows.**

* The store holds a job's lifecycle events (committed before they are published) as soon as
  they are published, and *every* event once the terminal event is stored: the leader
  stores deferred token/metrics events in the terminal event's transaction.
* Notifications carry events as they are published, possibly without their data (too big
  for ``NOTIFY``: read them from the store), and may be missed (a listener reconnecting, the
  leader's bounded queue overflowing) — never reordered.
* A small cache of recent notified events of jobs nobody follows here (``recent_max``
  events, oldest evicted first): a client arriving mid-job — e.g. resuming here after the
  instance it was on died — gets the deferred events it lacks without waiting for the end.

**Rules** (per followed job; ``next`` is the stream's ``next_id``):

* an event ``< next`` is a repeat: ignored. Nothing is published after the terminal event.
* an event ``== next`` with its data is published at once, then every buffered event that
  now follows on.
* an event ``> next`` (a gap: a missed notification, or deferred events not stored yet) is
  buffered (at most ``pending_max`` per job, the ones closest to ``next`` kept) and a fill
  from the store is requested.
* a **fill** reads ``store.events_after(job, last_id)`` and merges it with the buffer (the
  store wins on an id both have), publishing what follows on. When the store returns the
  terminal event, the store is complete: everything that follows on is published, then the
  terminal event — with ``gap_ok`` if ids are missing before it (events lost with a dead
  leader, numbered past by :data:`~orchestratord.services.events.LOST_EVENTS_GAP`);
  buffered non-terminal events beyond such a gap are discarded (they can never follow on).
* A terminal notification, a notification without data for ``next``, a resync (the bus
  reconnected) and the first :meth:`RemoteStreams.stream` call fill at once. A fill that
  leaves a gap is retried only after a backoff (``fill_backoff_s``, doubling up to
  ``sweep_s``) when further notifications ask for it: a gap made of deferred events stays
  until the terminal event is stored, and must not cost a query per token.
* Every ``sweep_s`` the sweeper fills streams that have a gap or saw nothing for
  ``poll_idle_s`` (a lost terminal notification is found by polling), and forgets streams
  whose terminal event is published and that have no subscriber, or that have had no
  subscriber for ``ttl_s``.

Fills of one job are serialized (one task per job, holding the job's ``asyncio.Lock``),
and every publication checks ``event_id == next_id`` synchronously, so concurrent sources
never publish an event twice or out of order.

**What the caller does.** Count its SSE clients in ``JobStream.subscribers`` (or use
:meth:`RemoteStreams.follow_batches`, which does); do not use this for jobs relayed by this
very instance (their local stream is authoritative). ``subscribers`` here are followers'
clients: the leader does not see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from orchestratord.pg_bus import EVENTS_CHANNEL, EventNote, PgBus, decode_event
from orchestratord.store import Store, StoredEvent
from orchestratord.streams import JobStream

__all__ = ["RemoteStreams"]

log = logging.getLogger("orchestratord.remote_streams")


@dataclass(eq=False)
class _Followed:
    """One followed job: its stream, the notified events that do not follow on yet, and
    the state of its fills."""

    stream: JobStream
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[int, StoredEvent] = field(default_factory=dict)
    hint: int = 0
    """The highest event id known to exist (notified, with or without data)."""
    wanted: bool = False
    urgent: bool = False
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    not_before: float = 0.0
    backoff: float = 0.0
    active: float = field(default_factory=time.monotonic)
    """Last publication or fill (monotonic): the idle poll counts from it."""
    seen: float = field(default_factory=time.monotonic)
    """Last time it was handed out or had a subscriber: the TTL counts from it."""


class RemoteStreams:
    """The streams this follower serves for jobs relayed elsewhere (module docstring).

    ``store`` is read for fills; :meth:`attach` registers on a :class:`PgBus`; :meth:`start`
    runs the sweeper; :meth:`close` stops everything (streams already handed out stay
    usable but are no longer updated).
    """

    def __init__(
        self,
        store: Store,
        *,
        pending_max: int = 4096,
        recent_max: int = 50_000,
        ttl_s: float = 600.0,
        sweep_s: float = 2.0,
        poll_idle_s: float = 10.0,
        fill_backoff_s: float = 0.05,
    ) -> None:
        self.store = store
        self.pending_max = pending_max
        self.recent_max = recent_max
        self.ttl_s = ttl_s
        self.sweep_s = sweep_s
        self.poll_idle_s = poll_idle_s
        self.fill_backoff_s = fill_backoff_s
        self._jobs: dict[str, _Followed] = {}
        self._recent: dict[str, dict[int, StoredEvent]] = {}
        self._recent_order: deque[tuple[str, int]] = deque()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self.fills = 0
        """Store reads made to fill streams."""
        self.fill_errors = 0
        self.notes_dropped = 0
        """Notified events not kept (a job's buffer full, or discarded behind a lost gap)."""
        self.bad_payloads = 0

    # -- wiring --------------------------------------------------------------------------

    def attach(self, bus: PgBus) -> None:
        """Take events from ``bus``'s :data:`EVENTS_CHANNEL` and refill on its resyncs."""
        bus.on(EVENTS_CHANNEL, self.on_payload)
        bus.on_resync(self.resync)

    def start(self) -> None:
        """Run the sweeper (see the module docstring)."""
        self._closed = False
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="remote-streams-sweep")

    async def close(self) -> None:
        """Stop the sweeper and every fill; forget every stream."""
        self._closed = True
        tasks = [self._sweeper] + [f.task for f in self._jobs.values()]
        self._sweeper = None
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._jobs.clear()
        self._recent.clear()
        self._recent_order.clear()

    # -- API -----------------------------------------------------------------------------

    def followed(self) -> list[str]:
        """Jobs with a stream in memory."""
        return list(self._jobs)

    async def stream(self, job_id: str) -> JobStream:
        """The stream of ``job_id``: every event stored so far (and recent notified ones),
        then kept up to date. The same object while it stays in memory. Empty if the store
        has no event of that job (check that the job exists first). Raises what the store
        raises if the first read fails."""
        while True:
            f = self._jobs.get(job_id)
            if f is None:
                f = _Followed(JobStream(job_id))
                self._jobs[job_id] = f  # before reading: notifications meanwhile are kept
                for event in self._take_recent(job_id):
                    self._note(f, event.event_id, event)
                try:
                    async with f.lock:
                        events = await self.store.events_after(job_id, f.stream.last_id)
                        self.fills += 1
                        self._merge(f, events)
                except BaseException:
                    if self._jobs.get(job_id) is f:
                        del self._jobs[job_id]
                    f.ready.set()
                    raise
                f.ready.set()
                if f.hint >= f.stream.next_id:  # a gap we just read: no read per token
                    f.backoff = self.fill_backoff_s
                    f.not_before = time.monotonic() + f.backoff
                return f.stream
            await f.ready.wait()
            if self._jobs.get(job_id) is f:
                f.seen = time.monotonic()
                return f.stream
            # its first read failed: try again ourselves

    async def follow_batches(
        self, job_id: str, last_id: int, *, idle_s: float | None = None
    ) -> AsyncIterator[list[StoredEvent] | None]:
        """:meth:`JobStream.follow_batches` of :meth:`stream`, counted in its
        ``subscribers`` while it runs."""
        stream = await self.stream(job_id)
        stream.subscribers += 1
        try:
            async for batch in stream.follow_batches(last_id, idle_s=idle_s):
                yield batch
        finally:
            stream.subscribers -= 1
            f = self._jobs.get(job_id)
            if f is not None and f.stream is stream:
                f.seen = time.monotonic()
                self._maybe_forget(job_id, f)

    async def fill(self, job_id: str) -> None:
        """Fill ``job_id``'s stream from the store now (if followed) and wait for it."""
        f = self._jobs.get(job_id)
        if f is not None:
            task = self._request_fill(f, urgent=True)
            await asyncio.shield(task)

    def resync(self) -> None:
        """Notifications may have been missed: fill every followed stream from the store
        (the :meth:`PgBus.on_resync` callback)."""
        for f in list(self._jobs.values()):
            if f.stream.terminal is None:
                self._request_fill(f, urgent=True)

    def on_payload(self, payload: str) -> None:
        """An :data:`EVENTS_CHANNEL` notification (the :meth:`PgBus.on` callback)."""
        try:
            note = decode_event(payload)
        except ValueError:
            self.bad_payloads += 1
            return
        self.on_note(note)

    def on_note(self, note: EventNote) -> None:
        """A notified event (decoded)."""
        f = self._jobs.get(note.job_id)
        if f is None:
            self._remember(note)
            return
        self._note(f, note.event_id, note.event())
        stream = f.stream
        if stream.terminal is not None:
            return
        if note.terminal or (note.data is None and note.event_id == stream.next_id):
            self._request_fill(f, urgent=True)
        elif f.hint >= stream.next_id:
            self._request_fill(f)

    # -- merging -------------------------------------------------------------------------

    def _note(self, f: _Followed, event_id: int, event: StoredEvent | None) -> None:
        """Take one notified event (``None``: without data, only its id is known)."""
        stream = f.stream
        if stream.terminal is not None or event_id < stream.next_id:
            return
        f.hint = max(f.hint, event_id)
        if event is None:
            return
        if event_id == stream.next_id and not event.terminal:
            self._publish(f, event)
            self._drain_pending(f)
            return
        if event_id == stream.next_id:  # terminal, in order: everything before it is here
            self._publish(f, event)
            return
        if event_id in f.pending:
            return
        if len(f.pending) >= self.pending_max and not event.terminal:
            worst = max(f.pending)
            if event_id > worst:
                self.notes_dropped += 1
                return
            del f.pending[worst]
            self.notes_dropped += 1
        f.pending[event_id] = event

    def _merge(self, f: _Followed, stored: Iterable[StoredEvent]) -> None:
        """Take a store read (authoritative: it wins over a notified copy)."""
        stream = f.stream
        if stream.terminal is not None:
            return
        terminal: StoredEvent | None = None
        for event in stored:
            if event.event_id < stream.next_id:
                continue
            f.hint = max(f.hint, event.event_id)
            if event.terminal:
                terminal = event
            f.pending[event.event_id] = event
        self._drain_pending(f)
        if terminal is not None and stream.terminal is None:
            # The store holds the terminal event: it holds every event that will ever be.
            # What does not follow on is lost; close with the terminal event.
            lost = [i for i in f.pending if i != terminal.event_id]
            self.notes_dropped += len(lost)
            f.pending.clear()
            if terminal.event_id > stream.next_id:
                log.info(
                    "remote_stream.lost_events",
                    extra={"job_id": terminal.job_id, "missing_from": stream.next_id},
                )
            self._publish(f, terminal, gap_ok=True)

    def _drain_pending(self, f: _Followed) -> None:
        stream = f.stream
        while stream.terminal is None:
            event = f.pending.pop(stream.next_id, None)
            if event is None:
                break
            self._publish(f, event)
        if stream.terminal is not None:
            f.pending.clear()
        elif f.pending:  # forget anything that fell behind (cannot happen, but be safe)
            for i in [i for i in f.pending if i < stream.next_id]:
                del f.pending[i]

    def _publish(self, f: _Followed, event: StoredEvent, *, gap_ok: bool = False) -> None:
        f.stream.publish(event, gap_ok=gap_ok)
        f.active = time.monotonic()
        f.backoff = 0.0
        f.not_before = 0.0
        if event.terminal:
            f.pending.clear()
            self._maybe_forget(event.job_id, f)

    def _maybe_forget(self, job_id: str, f: _Followed) -> None:
        if f.stream.terminal is not None and f.stream.subscribers <= 0:
            if self._jobs.get(job_id) is f:
                del self._jobs[job_id]
            if f.task is not None and f.task is not asyncio.current_task():
                f.task.cancel()

    # -- fills ---------------------------------------------------------------------------

    def _request_fill(self, f: _Followed, *, urgent: bool = False) -> asyncio.Task[None]:
        f.wanted = True
        if urgent:
            f.urgent = True
            f.kick.set()
        if f.task is None or f.task.done():
            f.task = asyncio.create_task(self._fill_loop(f), name=f"fill-{f.stream.job_id}")
        return f.task

    async def _fill_loop(self, f: _Followed) -> None:
        stream = f.stream
        while f.wanted and not self._closed and stream.terminal is None:
            if not f.urgent:
                delay = f.not_before - time.monotonic()
                if delay > 0:
                    f.kick.clear()
                    with contextlib.suppress(TimeoutError):  # asyncio.timeout: see streams
                        async with asyncio.timeout(delay):
                            await f.kick.wait()
                    continue
            f.wanted = f.urgent = False
            before = stream.last_id
            failed = False
            async with f.lock:
                try:
                    events = await self.store.events_after(stream.job_id, stream.last_id)
                except Exception as exc:
                    self.fill_errors += 1
                    log.warning(
                        "remote_stream.fill_failed",
                        extra={"job_id": stream.job_id, "error": repr(exc)},
                    )
                    f.wanted = failed = True  # retried after the backoff
                    events = []
                self.fills += 1
                f.active = time.monotonic()
                self._merge(f, events)
            gap = stream.terminal is None and f.hint >= stream.next_id
            if failed or (gap and stream.last_id == before):
                # A gap the store cannot fill yet (deferred events are stored with the
                # terminal event): back off instead of reading again for every token.
                f.backoff = min(self.sweep_s, max(self.fill_backoff_s, f.backoff * 2))
                f.not_before = time.monotonic() + f.backoff

    # -- recent events of jobs nobody follows ------------------------------------------

    def _remember(self, note: EventNote) -> None:
        if self.recent_max <= 0:
            return
        if note.terminal:  # the store is complete for this job
            self._recent.pop(note.job_id, None)
            return
        event = note.event()
        if event is None:
            return
        self._recent.setdefault(note.job_id, {})[note.event_id] = event
        self._recent_order.append((note.job_id, note.event_id))
        while len(self._recent_order) > self.recent_max:
            job_id, event_id = self._recent_order.popleft()
            events = self._recent.get(job_id)
            if events is not None:
                events.pop(event_id, None)
                if not events:
                    del self._recent[job_id]

    def _take_recent(self, job_id: str) -> list[StoredEvent]:
        events = self._recent.pop(job_id, None)
        return [events[i] for i in sorted(events)] if events else []

    # -- sweeper -------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            self.sweep()

    def sweep(self) -> None:
        """One pass of the sweeper: forget finished or abandoned streams; fill those with
        a gap or idle for ``poll_idle_s``."""
        now = time.monotonic()
        for job_id, f in list(self._jobs.items()):
            stream = f.stream
            if stream.subscribers > 0:
                f.seen = now
            if stream.terminal is not None:
                self._maybe_forget(job_id, f)
                continue
            if stream.subscribers <= 0 and now - f.seen > self.ttl_s:
                del self._jobs[job_id]
                if f.task is not None:
                    f.task.cancel()
                continue
            if f.ready.is_set() and (
                f.hint >= stream.next_id or now - f.active >= self.poll_idle_s
            ):
                self._request_fill(f)
