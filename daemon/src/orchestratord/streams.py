"""SSE event streams of jobs: the in-memory fan-out of each active job and the wire format.

A job's events are numbered 1, 2, 3, … with no gaps (``queued`` is 1). Every event is
committed to the store *before* it is published here, so anything a client has seen is also
on disk: a reconnecting client (``Last-Event-ID: n``) gets ``n+1…`` from memory while the job
is active, or from the store once it is finished, and never a duplicate.

Wire format (one event)::

    id: 7
    event: token
    data: {"i": 5, "t": " world"}

"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Callable, Iterable

from orchestratord.store import StoredEvent

__all__ = ["EVENT_KINDS", "JobStream", "format_sse", "keepalive"]

EVENT_KINDS = ("queued", "started", "token", "metrics", "end", "error")
"""Every SSE event kind the daemon sends, in the order they may appear."""


def format_sse(event: StoredEvent) -> bytes:
    """``event`` in the SSE wire format (the payload is one line of JSON)."""
    return f"id: {event.event_id}\nevent: {event.kind}\ndata: {event.data}\n\n".encode()


def keepalive() -> bytes:
    """An SSE comment line that keeps idle connections (and proxies) open."""
    return b": keepalive\n\n"


class JobStream:
    """The published events of one job and the subscribers waiting for more.

    ``publish`` appends an event (ids must follow on without gaps) and wakes every waiting
    subscriber; :meth:`follow` yields events after a given id until the terminal one.
    """

    def __init__(
        self,
        job_id: str,
        events: Iterable[StoredEvent] = (),
        *,
        on_publish: Callable[[StoredEvent], object] | None = None,
    ) -> None:
        self.job_id = job_id
        self.events: list[StoredEvent] = list(events)
        self.on_publish = on_publish
        """Told of every published event (a leader tells the other daemons)."""
        self._waiter: asyncio.Future[None] | None = None
        self.subscribers = 0
        """Clients currently following this stream."""

    @property
    def last_id(self) -> int:
        """Id of the newest event (0 when empty)."""
        return self.events[-1].event_id if self.events else 0

    @property
    def next_id(self) -> int:
        """Id the next event must carry."""
        return self.last_id + 1

    @property
    def terminal(self) -> StoredEvent | None:
        """The terminal event, once published."""
        if self.events and self.events[-1].terminal:
            return self.events[-1]
        return None

    def publish(self, event: StoredEvent, *, gap_ok: bool = False) -> None:
        """Append ``event`` and wake subscribers. Refuses gaps, reordering and anything after
        the terminal event (each would break the SSE contract); ``gap_ok`` lets a terminal
        event follow a gap left by events that could not be stored."""
        if self.terminal is not None:
            raise ValueError(f"job {self.job_id}: event after the terminal event")
        if gap_ok and event.terminal and event.event_id > self.next_id:
            pass
        elif event.event_id != self.next_id:
            raise ValueError(
                f"job {self.job_id}: event id {event.event_id}, expected {self.next_id}"
            )
        self.events.append(event)
        if self.on_publish is not None:
            self.on_publish(event)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def after(self, last_id: int) -> list[StoredEvent]:
        """Events with ``event_id > last_id``."""
        if not self.events:
            return []
        start = max(0, last_id - self.events[0].event_id + 1)
        if start >= len(self.events) or self.events[start - 1].event_id != last_id:
            # ids have a gap (a terminal event numbered past lost ones): search
            start = bisect.bisect_right(self.events, last_id, key=lambda e: e.event_id)
        return self.events[start:]

    def next_publish(self) -> asyncio.Future[None]:
        """A future resolved by the next :meth:`publish` (shared by every waiter). Take it
        *before* suspending: a publish after this call always resolves it."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    async def wait(self) -> None:
        """Until the next :meth:`publish`."""
        await asyncio.shield(self.next_publish())

    async def follow_batches(
        self, last_id: int, *, idle_s: float | None = None
    ) -> AsyncIterator[list[StoredEvent] | None]:
        """Every event after ``last_id`` as it comes, in batches: all that were published
        since the previous batch (so a writer sends them at once), ending after the batch
        holding the terminal event. With ``idle_s``, yields ``None`` after that many idle
        seconds (time for a keepalive)."""
        while True:
            batch = self.after(last_id)
            if batch:
                for n, event in enumerate(batch):
                    if event.terminal:
                        yield batch[: n + 1]
                        return
                yield batch  # suspends: more events may be published meanwhile
                last_id = batch[-1].event_id
                continue  # look again before waiting, or an event published meanwhile waits
            if self.terminal is not None:  # the client already has the terminal event
                return
            # The waiter is taken before any suspension: a publish after the check above
            # always wakes this follower (no lost wake-up).
            published = self.next_publish()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel (the
                # client left) that comes as the event is published
                async with asyncio.timeout(idle_s):
                    await asyncio.shield(published)
            except TimeoutError:
                yield None

    async def follow(
        self, last_id: int, *, idle_s: float | None = None
    ) -> AsyncIterator[StoredEvent | None]:
        """Events after ``last_id`` as they come, one at a time (see
        :meth:`follow_batches`), ending after the terminal event."""
        async for batch in self.follow_batches(last_id, idle_s=idle_s):
            if batch is None:
                yield None
                continue
            for event in batch:
                yield event
