"""Dispatch and relay: a queued job is sent to a worker and the worker's events become the
job's events.

:meth:`Relay.dispatch` checks that a scheduler's decision still fits reality (the job is
queued, the pool is not offline, the worker is ready with a free slot and serves the job's
model) and starts a relay task. The relay reads the worker's event stream and turns it into
``started``, ``token``, ``metrics`` and a terminal event; faults go to the lifecycle, which
retries or fails the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from orchestrator_core import ErrorCode, JobKind, JobStatus, PoolInfo, WorkerInfo, WorkerStatus
from orchestrator_core.openai import messages_from_json

from orchestratord.logs import log
from orchestratord.services.context import Context
from orchestratord.services.events import EventWriter
from orchestratord.services.jobs import ActiveJob
from orchestratord.services.lifecycle import Lifecycle
from orchestratord.workers import ExecuteRequest, WorkerEvent, WorkerLost, WorkerUnreachable

__all__ = ["Relay"]

TRANSIENT_WORKER_CODES = frozenset(
    {
        "WORKER_FAILED",
        "DISPATCH_FAILED",
        "POOL_UNAVAILABLE",
        "NO_CAPACITY",
        "INTERNAL",
        "CANCELLED",  # a worker stopped under us (eviction, drain) — not the client's cancel
    }
)
"""Error codes a worker may report that are worth a retry elsewhere."""


class Relay:
    """Dispatches jobs and relays their workers' events (see the module docstring)."""

    def __init__(self, ctx: Context, events: EventWriter, lifecycle: Lifecycle) -> None:
        self.ctx = ctx
        self.events = events
        self.lifecycle = lifecycle

    def find_worker(self, pool_id: str, worker_id: str) -> tuple[PoolInfo, WorkerInfo] | None:
        """The pool (not offline) and worker with these ids, or ``None``."""
        pool = self.ctx.cluster.live_pool(pool_id)
        if pool is None:
            return None
        for worker in pool.workers:
            if worker.worker_id == worker_id:
                return pool, worker
        return None

    def dispatch(self, job_id: str, pool_id: str, worker_id: str) -> str | None:
        """Start ``job_id`` on the worker, or return why the decision no longer fits reality
        (the caller logs and drops it)."""
        ctx = self.ctx
        a = ctx.jobs.get(job_id)
        if a is None or not a.eligible or ctx.cluster.state.get_job(job_id) is None:
            return "job is not queued"
        found = self.find_worker(pool_id, worker_id)
        if found is None:
            return "worker or pool gone"
        _pool, worker = found
        if worker.status not in (WorkerStatus.READY, WorkerStatus.BUSY):
            return f"worker is {worker.status}"
        if len(ctx.cluster.state.jobs_on_worker(worker_id)) >= worker.max_concurrency:
            return "worker is busy"
        canonical = ctx.cluster.canonical_model
        if canonical(worker.model_ref) != canonical(a.job.model_ref):
            return "worker serves another model"
        if not worker.uri:
            return "worker has no uri"
        now = ctx.clock()
        a.job.start(pool_id=pool_id, worker_id=worker_id, now=now)
        a.row.worker_uri = worker.uri
        a.on_worker = (pool_id, worker_id)
        ctx.cluster.dispatched(job_id, worker_id, now)
        ctx.metrics.queue_wait.observe(max(0.0, now - a.job.queued_at))
        ctx.metrics.dispatch.labels("sent").inc()
        log(
            "job.dispatched",
            "dispatched",
            correlation_id=a.row.correlation_id,
            job_id=job_id,
            pool_id=pool_id,
            worker_id=worker_id,
            attempt=a.job.attempts,
        )
        a.relay = asyncio.get_running_loop().create_task(
            self._relay(a, pool_id, worker, worker.uri), name=f"relay-{job_id}"
        )
        ctx.update_queue_gauges()
        return None

    async def _relay(self, a: ActiveJob, pool_id: str, worker: WorkerInfo, uri: str) -> None:
        worker_id = worker.worker_id
        job = a.job
        chat = job.kind is JobKind.CHAT
        request = ExecuteRequest.of(
            job.params,
            job_id=a.job_id,
            prompt="" if chat else job.prompt or "",
            model=worker.model_ref,
            protocol=worker.protocol,
            messages=messages_from_json(job.prompt or "[]") if chat else None,
        )
        lifecycle = self.lifecycle
        try:
            self.events.store_row(a)  # running, on this worker: stored before any event
            stream = self.ctx.worker_client.execute(
                uri, request, correlation_id=a.row.correlation_id
            )
            try:
                await self._follow(a, stream, pool_id, worker_id)
            finally:  # close the worker's stream now, not whenever it is collected
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
        except asyncio.CancelledError:
            raise
        except WorkerUnreachable as exc:
            lifecycle.release(a)
            self.ctx.metrics.dispatch.labels("unreachable").inc()
            self.ctx.cluster.worker_failed(worker_id)
            await lifecycle.fault(a, ErrorCode.DISPATCH_FAILED, str(exc))
        except WorkerLost as exc:
            lifecycle.release(a)
            self.ctx.cluster.worker_failed(worker_id)
            await lifecycle.fault(a, ErrorCode.WORKER_FAILED, str(exc))
        except Exception as exc:
            lifecycle.release(a)
            log("http.error", "relay failed", level=logging.ERROR, exc_info=True, job_id=a.job_id)
            await lifecycle.fault(a, ErrorCode.WORKER_FAILED, f"relay error: {type(exc).__name__}")
        finally:
            lifecycle.release(a)

    async def _follow(
        self, a: ActiveJob, stream: AsyncIterator[WorkerEvent], pool_id: str, worker_id: str
    ) -> None:
        """Turn the worker's events into the job's, until its end (or a stop)."""
        lifecycle = self.lifecycle
        async for ev in stream:
            if a.terminal_sent:
                return
            if a.stopping is not None:
                if ev.kind in ("end", "error"):
                    return  # the stop path ends the job
                continue
            if ev.kind == "token":
                await self._token(a, ev.data)
                continue
            if ev.kind == "tokens":  # consecutive tokens a client read at once
                texts = ev.data.get("t")
                for text in texts if isinstance(texts, list) else ():
                    if a.terminal_sent or a.stopping is not None:
                        break
                    await self._token(a, {"t": text})
                continue
            if ev.kind == "error":
                lifecycle.release(a)
                await self._worker_error(a, ev.data)
                return
            if ev.kind not in ("started", "metrics", "end"):
                continue  # a kind this daemon does not know: ignored
            await self._started(a, pool_id, worker_id)
            if ev.kind == "metrics":
                await self.events.emit(a, "metrics", ev.data, deferred=True)
            elif ev.kind == "end":
                lifecycle.release(a)
                await lifecycle.finish(a, JobStatus.COMPLETED, end_data=ev.data)
                return

    async def _started(self, a: ActiveJob, pool_id: str, worker_id: str) -> None:
        if a.started_sent:
            return
        a.started_sent = True
        data = {
            "job_id": a.job_id,
            "pool_id": pool_id,
            "worker_id": worker_id,
            "attempt": a.job.attempts,
        }
        await self.events.emit(a, "started", data)

    async def _token(self, a: ActiveJob, data: dict[str, Any]) -> None:
        job = a.job
        await self._started(a, job.pool_id or "", job.worker_id or "")
        text = data.get("t", data.get("text", ""))
        first = a.row.tokens == 0
        a.row.tokens += 1
        if first:
            a.row.first_token_at = self.ctx.clock()
        payload = {"i": a.row.tokens - 1, "t": text if isinstance(text, str) else str(text)}
        # The first token is stored with the row (recovery reads first_token_at): later
        # ones are deferred to the terminal commit.
        if await self.events.emit(a, "token", payload, row=first, deferred=not first):
            self.ctx.metrics.tokens_relayed.inc()
            if first:
                self.ctx.metrics.ttft.observe(max(0.0, self.ctx.clock() - job.created_at))

    async def _worker_error(self, a: ActiveJob, data: dict[str, Any]) -> None:
        code = str(data.get("code") or "WORKER_FAILED")
        message = str(data.get("message") or code)
        if code in TRANSIENT_WORKER_CODES:
            await self.lifecycle.fault(
                a, ErrorCode.WORKER_FAILED, f"worker error {code}: {message}"
            )
            return
        try:
            err = ErrorCode(code)
        except ValueError:
            err = ErrorCode.WORKER_FAILED
        await self.lifecycle.finish(a, JobStatus.FAILED, err, message)
