"""Unit-test double of llorch's tests: an in-process stand-in for orchestratord's HTTP API.

**For unit tests only** (it lives under ``tests/`` and ships in no distribution).
:class:`FakeOrchestratord` answers the ``/v2`` contract of docs/design/http-api.md through an
``httpx.MockTransport`` (see :meth:`FakeOrchestratord.transport`), so the CLI's commands can be
exercised through typer's ``CliRunner`` without sockets. It keeps jobs in a dict, validates
submissions with orchestrator_core (so it answers bad input with the real codes and messages),
scripts each job's SSE events (``queued``, ``started``, ``token``…, ``metrics``, ``end``),
honours ``Last-Event-ID`` and can simulate a dropped connection or a Ctrl-C part-way through
a stream. It records every request for assertions.

Acceptance tests use the real daemon and a simulated pool instead.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
from llorch.app import app
from llorch.session import Seams
from orchestrator_core import RequestInvalid, TaskSubmitRequest, prompt_sha256
from typer.testing import CliRunner, Result

__all__ = ["FakeJob", "FakeOrchestratord", "invoke"]

_TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class FakeJob:
    """One job of the fake daemon: its public status and its scripted events."""

    status: dict[str, Any]
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    final_status: str = "completed"
    delivered: int = 0


class _EventStream(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes], fault: BaseException | None) -> None:
        self._chunks = chunks
        self._fault = fault

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks
        if self._fault is not None:
            raise self._fault


def _envelope(status: int, code: str, message: str, **details: Any) -> httpx.Response:
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "correlation_id": "test-correlation-id",
        }
    }
    return httpx.Response(status, json=body)


class FakeOrchestratord:
    """A scripted orchestratord. ``tokens`` is what every new job generates.

    Knobs for fault injection (each applies to the next event-stream request only, then resets):
    ``drop_after`` — close the connection with a read error after that many events;
    ``interrupt_after`` — raise ``KeyboardInterrupt`` after that many events (a Ctrl-C).
    ``fail_with`` makes new jobs end with an ``error`` event of that code.
    """

    def __init__(
        self,
        tokens: list[str] | None = None,
        *,
        now: float = 1_700_000_000.0,
    ) -> None:
        self.tokens = tokens if tokens is not None else ["Hello", ",", " world", "!"]
        self.now = now
        self.jobs: dict[str, FakeJob] = {}
        self.pools: list[dict[str, Any]] = []
        self.scheduler: dict[str, Any] = {"policy": "priority", "placement": "least-loaded"}
        self.requests: list[httpx.Request] = []
        self.drop_after: int | None = None
        self.interrupt_after: int | None = None
        self.fail_with: tuple[str, str] | None = None
        self.auth_token: str | None = None
        self._ids = itertools.count(1)

    def transport(self) -> httpx.MockTransport:
        """The ``httpx.MockTransport`` to hand to llorch's ``Seams``."""
        return httpx.MockTransport(self.handle)

    # -- fixtures --------------------------------------------------------------------------------

    def add_job(self, status: str = "queued", **fields: Any) -> str:
        """Put a job straight into the store (for status/list tests); returns its id."""
        n = next(self._ids)
        job_id = str(fields.pop("job_id", f"job-{n:04d}"))
        self.jobs[job_id] = FakeJob(
            {
                "job_id": job_id,
                "status": status,
                "model": fields.pop("model", "llama-3-8b"),
                "priority": fields.pop("priority", "interactive"),
                "session_id": fields.pop("session_id", None),
                "created_at": fields.pop("created_at", self.now - 60 + n),
                "prompt_hash": prompt_sha256("prompt"),
                **fields,
            }
        )
        return job_id

    def add_pool(self, pool_id: str = "pool-a", **fields: Any) -> dict[str, Any]:
        """Register a pool with one 24 GiB GPU and one ready worker unless told otherwise."""
        pool = {
            "pool_id": pool_id,
            "endpoint": f"http://{pool_id}:9200",
            "status": "online",
            "capabilities": ["text-gen"],
            "gpus": [
                {
                    "gpu_id": "gpu0",
                    "name": "RTX 4090",
                    "vram_total_bytes": 24 * 2**30,
                    "vram_free_bytes": 8 * 2**30,
                    "utilization": 0.5,
                }
            ],
            "workers": [
                {
                    "worker_id": f"{pool_id}-w1",
                    "model_ref": "llama-3-8b",
                    "gpu_ids": ["gpu0"],
                    "status": "ready",
                    "jobs_completed": 3,
                    "last_used_at": self.now - 5,
                }
            ],
            "models": ["llama-3-8b"],
            "registered_at": self.now - 3600,
            "last_heartbeat": self.now - 2,
        }
        pool.update(fields)
        self.pools.append(pool)
        return pool

    # -- routing ---------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request like orchestratord would."""
        self.requests.append(request)
        wanted = f"Bearer {self.auth_token}"
        if self.auth_token is not None and request.headers.get("Authorization") != wanted:
            return _envelope(401, "UNAUTHORIZED", "missing or wrong bearer token")
        parts = [unquote(p) for p in request.url.path.strip("/").split("/")]
        method = request.method
        if parts[:2] == ["v2", "tasks"]:
            if len(parts) == 2 and method == "POST":
                return self._submit(request)
            if len(parts) == 2 and method == "GET":
                return self._list(request)
            if len(parts) == 3 and method == "GET":
                return self._status(parts[2])
            if len(parts) == 3 and method == "DELETE":
                return self._cancel(parts[2])
            if len(parts) == 4 and parts[3] == "events" and method == "GET":
                return self._events(parts[2], request)
        if parts[:2] == ["v2", "pools"] and method == "GET":
            if len(parts) == 2:
                return httpx.Response(200, json={"pools": self.pools})
            for pool in self.pools:
                if pool["pool_id"] == parts[2]:
                    return httpx.Response(200, json=pool)
            return _envelope(404, "POOL_NOT_FOUND", f"pool {parts[2]} not found", pool_id=parts[2])
        if parts == ["v2", "scheduler"]:
            if method == "GET":
                return httpx.Response(200, json=self.scheduler)
            if method == "PUT":
                body = json.loads(request.content)
                if "fn schedule" not in str(body.get("script", "fn schedule")):
                    return _envelope(400, "INVALID_REQUEST", "script: no `schedule` function")
                self.scheduler = {**body, "activated_at": self.now}
                return httpx.Response(200, json=self.scheduler)
        return _envelope(404, "ROUTE_NOT_FOUND", f"no route {method} {request.url.path}")

    def _submit(self, request: httpx.Request) -> httpx.Response:
        try:
            task = TaskSubmitRequest.parse(request.content)
        except RequestInvalid as exc:
            return httpx.Response(400, json=exc.to_envelope("test-correlation-id"))
        job_id = self.add_job(
            "queued",
            model=task.model,
            priority=task.priority,
            session_id=task.session_id,
            created_at=self.now,
        )
        job = self.jobs[job_id]
        job.status["prompt_hash"] = prompt_sha256(task.prompt)
        events: list[tuple[str, dict[str, Any]]] = [
            ("queued", {"queue_position": 0}),
            ("started", {"pool_id": "pool-a", "worker_id": "pool-a-w1"}),
        ]
        events += [("token", {"i": i, "t": t}) for i, t in enumerate(self.tokens)]
        events.append(("metrics", {"tokens_generated": len(self.tokens)}))
        if self.fail_with:
            events.append(("error", {"code": self.fail_with[0], "message": self.fail_with[1]}))
        else:
            events.append(("end", {"tokens_generated": len(self.tokens)}))
        job.events = [(i + 1, name, data) for i, (name, data) in enumerate(events)]
        job.status["status"] = "running"
        job.final_status = "failed" if self.fail_with else "completed"
        body = {
            "job_id": job_id,
            "status": "queued",
            "queue_position": 0,
            "events_url": f"/v2/tasks/{job_id}/events",
        }
        return httpx.Response(202, json=body)

    def _status(self, job_id: str) -> httpx.Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _envelope(404, "JOB_NOT_FOUND", f"job {job_id} not found", job_id=job_id)
        return httpx.Response(200, json=job.status)

    def _list(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        jobs = [j.status for j in self.jobs.values()]
        filters = (("status", "status"), ("priority", "priority"), ("session", "session_id"))
        for key, name in filters:
            if key in params:
                jobs = [j for j in jobs if j.get(name) == params[key]]
        jobs.sort(key=lambda j: j["created_at"], reverse=True)
        start = int(params.get("cursor", "0"))
        limit = int(params.get("limit", "50"))
        page = jobs[start : start + limit]
        more = start + limit < len(jobs)
        return httpx.Response(
            200, json={"jobs": page, "next_cursor": str(start + limit) if more else None}
        )

    def _cancel(self, job_id: str) -> httpx.Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _envelope(404, "JOB_NOT_FOUND", f"job {job_id} not found", job_id=job_id)
        if job.status["status"] not in _TERMINAL:
            job.status["status"] = "cancelled"
            job.status["error"] = {"code": "CANCELLED", "message": "cancelled by client"}
            kept = [e for e in job.events if e[0] <= job.delivered]
            cancelled = (job.delivered + 1, "error", dict(job.status["error"]))
            job.events = [*kept, cancelled]
        return httpx.Response(200, json={"job_id": job_id, "status": job.status["status"]})

    def _events(self, job_id: str, request: httpx.Request) -> httpx.Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _envelope(404, "JOB_NOT_FOUND", f"job {job_id} not found", job_id=job_id)
        last = request.headers.get("Last-Event-ID")
        after = int(last) if last and last.isdigit() else 0
        pending = [e for e in job.events if e[0] > after]
        fault: BaseException | None = None
        for knob, exc in (
            ("drop_after", httpx.ReadError("connection reset by peer")),
            ("interrupt_after", KeyboardInterrupt()),
        ):
            limit = getattr(self, knob)
            if limit is not None:
                pending, fault = pending[:limit], exc
                setattr(self, knob, None)
        chunks = [b": keep-alive\n\n"]
        for event_id, name, data in pending:
            text = f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
            chunks.append(text.encode())
            job.delivered = max(job.delivered, event_id)
            if name == "token":
                job.status["tokens_generated"] = data["i"] + 1
            if name in ("end", "error") and job.status["status"] not in _TERMINAL:
                job.status["status"] = job.final_status
        return httpx.Response(
            200,
            headers={"Content-Type": "text/event-stream"},
            stream=_EventStream(chunks, fault),
        )


def invoke(
    fake: FakeOrchestratord | None,
    *args: str,
    env: dict[str, str | None] | None = None,
    stdin: str | None = None,
) -> Result:
    """Run ``llorch ARGS`` through typer's CliRunner against ``fake`` (the unit-test seam).

    ``fake=None`` uses httpx's real network transport (e.g. to hit a closed port). The
    environment starts without ``LLORCH_*``/``NO_COLOR`` and with ``XDG_CONFIG_HOME`` pointing
    nowhere, so the developer's own settings never leak into a test.
    """
    base: dict[str, str | None] = {
        "LLORCH_URL": None,
        "LLORCH_TOKEN": None,
        "LLORCH_TIMEOUT": None,
        "NO_COLOR": None,
        "XDG_CONFIG_HOME": "/nonexistent-llorch-test-config",
    }
    base.update(env or {})
    seams = Seams(
        transport=fake.transport() if fake is not None else None,
        sleep=lambda _s: None,
        clock=(lambda: fake.now) if fake is not None else time.time,
    )
    return CliRunner().invoke(app, list(args), env=base, input=stdin, obj=seams)
