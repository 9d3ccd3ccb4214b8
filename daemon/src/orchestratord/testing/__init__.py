"""Test tools for the daemon: a scripted (simulated) worker client, a recording pool-agent
client, configuration and pool builders, and an in-process app runner.

Nothing here runs in production; these are the doubles the daemon's in-process tests plug
into its I/O seams (:class:`~orchestratord.workers.WorkerClient`,
:class:`~orchestratord.pool_agents.PoolAgentClient`). Tests against real processes use the
``llorch-sim`` simulator instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from fastapi import FastAPI
from orchestrator_core import OrchestratorConfig

from orchestratord.store import MemoryStore, Store
from orchestratord.workers import ExecuteRequest, WorkerEvent, WorkerLost, WorkerUnreachable

__all__ = [
    "FailureMode",
    "RecordingPoolAgentClient",
    "ScriptedWorkerClient",
    "WorkerScript",
    "make_config",
    "pool_registration",
    "memory_store",
    "running_app",
    "wait_for",
]

FailureMode = Literal["none", "unreachable", "lost_before_token", "lost_after_tokens", "error"]


@dataclass
class WorkerScript:
    """What one ``execute`` call of the simulated worker does."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world"])
    token_delay_s: float = 0.0
    failure: FailureMode = "none"
    fail_after_tokens: int = 1
    error_code: str = "INVALID_REQUEST"
    hang: bool = False
    """Never finish on its own (until cancelled)."""
    metrics: bool = True
    batch: int = 1
    """Above 1: tokens come in ``tokens`` events of up to this many (as a client that read
    several chunks at once yields them)."""


class ScriptedWorkerClient:
    """A simulated :class:`~orchestratord.workers.WorkerClient`: each ``execute`` follows the
    next :class:`WorkerScript` queued for that worker URI (or ``default``). Records calls and
    cancellations; a cancel makes the running stream end with ``error CANCELLED``."""

    def __init__(self, default: WorkerScript | None = None) -> None:
        self.default = default or WorkerScript()
        self.scripts: dict[str, list[WorkerScript]] = {}
        self.calls: list[tuple[str, ExecuteRequest]] = []
        self.cancels: list[tuple[str, str]] = []
        self._cancelled: dict[str, asyncio.Event] = {}
        self.cancel_confirms = True
        """When False, cancel requests are recorded but the stream keeps going (tests the
        cancel deadline)."""

    def plan(self, uri: str, *scripts: WorkerScript) -> None:
        """Queue scripts for the next calls to ``uri``."""
        self.scripts.setdefault(uri, []).extend(scripts)

    def _script(self, uri: str) -> WorkerScript:
        queued = self.scripts.get(uri)
        return queued.pop(0) if queued else self.default

    async def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        """Play the next script."""
        self.calls.append((worker_uri, request))
        script = self._script(worker_uri)
        if script.failure == "unreachable":
            raise WorkerUnreachable("simulated: connection refused")
        cancelled = self._cancelled.setdefault(request.job_id, asyncio.Event())
        yield WorkerEvent("started", {"job_id": request.job_id, "worker_id": worker_uri})
        if script.failure == "lost_before_token":
            raise WorkerLost("simulated: worker died before the first token")
        if script.failure == "error":
            yield WorkerEvent("error", {"code": script.error_code, "message": "simulated"})
            return
        n = 0
        while script.hang or n < min(len(script.tokens), request.max_tokens):
            if script.failure == "lost_after_tokens" and n >= script.fail_after_tokens:
                raise WorkerLost("simulated: worker died mid-stream")
            if cancelled.is_set() and self.cancel_confirms:
                yield WorkerEvent("error", {"code": "CANCELLED", "message": "cancelled"})
                return
            delay = script.token_delay_s if not script.hang else max(script.token_delay_s, 0.01)
            if delay:
                with suppress(TimeoutError):
                    await asyncio.wait_for(cancelled.wait(), timeout=delay)
                if cancelled.is_set() and self.cancel_confirms:
                    yield WorkerEvent("error", {"code": "CANCELLED", "message": "cancelled"})
                    return
            texts: list[str] = []
            while len(texts) < max(1, script.batch) and n < min(
                len(script.tokens), request.max_tokens
            ):
                texts.append(script.tokens[n % len(script.tokens)] if script.tokens else "x")
                n += 1
            if not texts:  # a hanging script cycles through its tokens
                texts.append(script.tokens[n % len(script.tokens)] if script.tokens else "x")
                n += 1
            if len(texts) == 1:
                yield WorkerEvent("token", {"i": n - 1, "t": texts[0]})
            else:
                yield WorkerEvent("tokens", {"t": texts})
            if script.hang and n >= 10_000:
                break
        if script.metrics:
            yield WorkerEvent("metrics", {"tokens": n, "elapsed_ms": 1})
        yield WorkerEvent("end", {"tokens": n, "finish_reason": "length"})

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        """Record the cancel and signal the running stream."""
        self.cancels.append((worker_uri, job_id))
        self._cancelled.setdefault(job_id, asyncio.Event()).set()

    async def aclose(self) -> None:
        """Nothing to close."""


class RecordingPoolAgentClient:
    """A :class:`~orchestratord.pool_agents.PoolAgentClient` that records requests and
    answers with made-up worker ids."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, str, str, str]] = []
        self.stops: list[tuple[str, str]] = []

    async def start_worker(
        self, endpoint: str, *, pool_id: str, model_ref: str, gpu_id: str, correlation_id: str
    ) -> str:
        """Record and return ``w-<n>``."""
        self.starts.append((endpoint, pool_id, model_ref, gpu_id))
        return f"w-started-{len(self.starts)}"

    async def stop_worker(self, endpoint: str, worker_id: str, *, correlation_id: str) -> None:
        """Record."""
        self.stops.append((endpoint, worker_id))

    async def aclose(self) -> None:
        """Nothing to close."""


def make_config(data: Mapping[str, Any] | None = None, **sections: Any) -> OrchestratorConfig:
    """A test configuration: the memory backend, one model ``m1`` (context 4096), fast
    retries, plus ``data`` / ``sections`` merged on top."""
    base: dict[str, Any] = {
        "persistence": {"backend": "memory"},
        "models": [{"model_ref": "m1", "aliases": ["model-one"], "context_length": 4096}],
        "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 3},
        "timeout": {"cancel_deadline_s": 1.0, "reconnect_grace_s": 1.0},
    }
    for source in (data or {}), sections:
        for key, value in source.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
    return OrchestratorConfig.from_mapping(base, env={})


def pool_registration(
    pool_id: str = "pool-a",
    *,
    workers: int = 1,
    model: str = "m1",
    uri_prefix: str = "http://worker",
    max_concurrency: int = 1,
) -> dict[str, Any]:
    """JSON body of ``POST /v2/pools/register`` with ``workers`` ready workers of ``model``."""
    return {
        "pool_id": pool_id,
        "endpoint": f"http://{pool_id}.pool",
        "gpus": [{"gpu_id": "gpu0", "vram_total_bytes": 24 << 30, "vram_free_bytes": 8 << 30}],
        "workers": [
            {
                "worker_id": f"{pool_id}-w{i}",
                "model_ref": model,
                "gpu_ids": ["gpu0"],
                "status": "ready",
                "uri": f"{uri_prefix}-{pool_id}-{i}",
                "max_concurrency": max_concurrency,
            }
            for i in range(workers)
        ],
        "models": [model],
    }


@asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield an httpx client bound to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orchestratord") as c:
            yield c


def memory_store() -> Store:
    """A fresh in-memory store."""
    return MemoryStore()


async def wait_for(predicate: Any, timeout_s: float = 5.0, interval_s: float = 0.005) -> None:
    """Poll ``predicate()`` until true or raise TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval_s)
