"""A job's events: stored, then published to its SSE stream, in order.

Lifecycle events (``queued``, ``started``, the first ``token`` with the job's row, the
terminal event) are committed before they are published. Commits are pipelined: the relay
goes on reading the worker while earlier events are being committed (the store's writer
commits them in order, batched), and each event is published only once it — and every event
before it — is committed. At most :data:`MAX_INFLIGHT` events per job are in flight. A failed
commit stops publishing for that job and reports it (:attr:`EventWriter.on_write_failed`),
which ends the job.

The other ``token`` and ``metrics`` events are *deferred*: published at once (still after
every event before them), kept in memory (the job's stream serves live resumes) and stored
in one batch with the terminal event, in the same transaction. One durable write per
lifecycle step instead of one row per token; a finished job's events are all stored. If the
daemon dies mid-stream, the job fails at restart (tokens were relayed) and its terminal event
is numbered past any id its lost events had (see :data:`LOST_EVENTS_GAP`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from orchestrator_core import ErrorCode, JobStatus

from orchestratord.logs import log
from orchestratord.services.context import dumps
from orchestratord.services.jobs import ActiveJob
from orchestratord.store import JobRow, Store, StoredEvent

__all__ = ["MAX_INFLIGHT", "EventWriter"]

MAX_INFLIGHT = 256

LOST_EVENTS_GAP = 1_000_000
"""How far past its last stored event id a recovered job's terminal event is numbered when
deferred events may have been published and lost: beyond any id a client can hold."""


class EventWriter:
    """Commit-then-publish of job events (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.on_write_failed: Callable[[ActiveJob], None] = lambda _a: None
        """Called once per job whose event could not be stored (the lifecycle ends it)."""

    async def emit(
        self,
        a: ActiveJob,
        kind: str,
        data: dict[str, Any],
        *,
        row: bool = False,
        deferred: bool = False,
    ) -> bool:
        """Commit, then publish, one non-terminal event (with the job's row when ``row``);
        or, ``deferred``, publish it now and store it with the terminal event. False when
        the job is ending."""
        if a.terminal_sent or a.closing or a.write_failed:
            return False
        a.last_reserved += 1
        event = StoredEvent(a.job_id, a.last_reserved, kind, dumps(data))
        if deferred and not row:
            a.unstored.append(event)
            if not a.inflight:
                a.stream.publish(event)
                return True
            stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            stored.set_result(None)  # nothing to wait for but the events before it
            a.inflight.append((stored, event))
            return True
        commit = asyncio.ensure_future(
            self.store.commit(jobs=[a.row] if row else (), events=[event], durable=False)
        )
        a.inflight.append((commit, event))
        commit.add_done_callback(lambda _f: self.publish_committed(a))
        if len(a.inflight) > MAX_INFLIGHT:
            await asyncio.wait({a.inflight[0][0]})
        return True

    def store_row(self, a: ActiveJob) -> None:
        """Commit ``a``'s row (as it is now) in the job's pipeline, without waiting: the
        events emitted after it are published only once it is stored."""
        if a.terminal_sent or a.closing or a.write_failed:
            return
        commit = asyncio.ensure_future(self.store.commit(jobs=[a.row], durable=False))
        a.inflight.append((commit, None))
        commit.add_done_callback(lambda _f: self.publish_committed(a))

    def publish_committed(self, a: ActiveJob) -> None:
        """Publish the committed events at the head of ``a``'s pipeline."""
        while a.inflight and a.inflight[0][0].done():
            fut, event = a.inflight.popleft()
            if fut.cancelled() or fut.exception() is not None:
                if not a.write_failed:
                    a.write_failed = True
                    log(
                        "http.error",
                        f"event commit failed: {fut.exception()!r}",
                        level=logging.ERROR,
                        job_id=a.job_id,
                    )
                    self.on_write_failed(a)
                continue
            if event is not None and not a.write_failed and not a.terminal_sent:
                a.stream.publish(event)

    async def drain(self, a: ActiveJob) -> None:
        """Until every in-flight event of ``a`` is committed and published."""
        while a.inflight:
            await asyncio.wait({f for f, _ in a.inflight})
            self.publish_committed(a)

    @staticmethod
    def queued_event(job_id: str, position: int, model_ref: str) -> StoredEvent:
        """Event 1 of every job."""
        data = {"job_id": job_id, "queue_position": position, "model": model_ref}
        return StoredEvent(job_id, 1, "queued", dumps(data))

    @staticmethod
    def terminal_event(a: ActiveJob, end_data: dict[str, Any] | None = None) -> StoredEvent:
        """The terminal event of ``a`` in its (terminal) status; reserves its id."""
        a.last_reserved += 1
        return EventWriter.ended_event(a.job_id, a.row, a.last_reserved, end_data)

    @staticmethod
    def ended_event(
        job_id: str, row: JobRow, event_id: int, end_data: dict[str, Any] | None = None
    ) -> StoredEvent:
        """Event ``event_id`` of a job whose ``row`` is terminal: ``end`` or ``error``."""
        job = row.job
        if job.status is JobStatus.COMPLETED:
            data: dict[str, Any] = dict(end_data or {})
            data.update({"job_id": job_id, "tokens": row.tokens})
            return StoredEvent(job_id, event_id, "end", dumps(data))
        code = str(job.error_code or ErrorCode.INTERNAL)
        data = {"job_id": job_id, "code": code, "message": job.error_message or code}
        return StoredEvent(job_id, event_id, "error", dumps(data))
