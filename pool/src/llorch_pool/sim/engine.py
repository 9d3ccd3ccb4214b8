"""The simulated engine: an ASGI app that serves one model like a real LLM engine would.

This is a **simulator** (a test and benchmark tool), not an engine. It speaks both worker
protocols of the project on the same port:

* the native worker protocol (docs/pool-agent.md) — ``POST /execute`` (SSE ``started`` →
  ``token``* → ``metrics``* → ``end`` | ``error``), ``POST /cancel``, ``GET /health``;
* the OpenAI-compatible protocol — ``POST /v1/completions`` (``stream: true`` gives
  ``data: {...}`` chunks and ``data: [DONE]``; a closed connection cancels), ``GET /v1/models``.

Timing model (:class:`SimEngineConfig`): the model is loading for ``load_time_s`` after the
engine starts (``/health`` and ``/v1/models`` answer 503, jobs are refused); a job's first
token comes ``ttft_s`` after its request; token *n* is due ``ttft_s + n / tokens_per_s``
after the request (``tokens_per_s = 0``: as fast as possible). Each of ``max_concurrency``
slots runs one job at that rate; a request finding every slot taken is refused with 503
(or waits for a slot with ``queue_when_busy``).

Fault injection (:class:`EngineFaults`, changeable at run time with ``POST /sim/faults``):
crash after N tokens (drop the connection with no terminal event; ``crash_scope="engine"``
also kills the whole engine), hang after N tokens (nothing more is sent until the job is
cancelled or the client goes away), an engine error after N tokens (a terminal ``error``
event ``WORKER_FAILED``), and refusing every job (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from orchestrator_core.api import ApiModel
from orchestrator_core.errors import ErrorCode, OrchestratorError, RequestInvalid
from orchestrator_core.jobs import JobParams
from orchestrator_core.sse import encode_data, encode_event
from pydantic import ConfigDict, Field, Strict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llorch_pool.errors import EngineBusy, WorkerStateInvalid
from llorch_pool.protocol import (
    CORRELATION_HEADER,
    CancelRequest,
    ExecuteRequest,
)
from llorch_pool.serving import error_response, guarded, read_json
from llorch_pool.sim.tokens import StopScanner, TokenSource

__all__ = [
    "EngineFaults",
    "EngineStats",
    "OpenAiCompletionRequest",
    "SimEngineConfig",
    "SimulatedEngine",
]

log = logging.getLogger("llorch_pool.sim.engine")

_NonNegInt = Annotated[int, Field(ge=0)]
_CANCELLED_MEMORY = 10_000  # job ids of early cancels remembered (a cancel may beat /execute)
_CANCELLED_TTL_S = 120.0


class SimEngineConfig(ApiModel):
    """How one simulated engine behaves. Times are seconds."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model_ref: Annotated[str, Field(min_length=1, max_length=256)] = "sim-model"
    worker_id: Annotated[str, Field(min_length=1, max_length=128)] = "sim-engine"
    ttft_s: Annotated[float, Field(ge=0.0, le=600.0)] = 0.05
    tokens_per_s: Annotated[float, Field(ge=0.0)] = 50.0
    load_time_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 0.0
    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 1
    queue_when_busy: bool = False
    metrics_every: Annotated[int, Field(ge=1)] = 16
    eos_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    vram_bytes: _NonNegInt = 0


class EngineFaults(ApiModel):
    """Faults to inject. ``None`` = off. Token counts are of generated tokens."""

    model_config = ConfigDict(strict=True, extra="forbid")

    crash_after_tokens: _NonNegInt | None = None
    crash_scope: Literal["stream", "engine"] = "stream"
    hang_after_tokens: _NonNegInt | None = None
    error_after_tokens: _NonNegInt | None = None
    refuse: bool = False

    def merged(self, update: EngineFaults) -> EngineFaults:
        """These faults with the fields that ``update`` set explicitly replaced."""
        return self.model_copy(update={k: getattr(update, k) for k in update.model_fields_set})


@dataclass(slots=True)
class EngineStats:
    """Counters of one engine (reported by ``/health``)."""

    active_jobs: int = 0
    jobs_started: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    tokens_generated: int = 0
    last_used_at: float | None = None
    current_job_id: str | None = None


class OpenAiCompletionRequest(ApiModel):
    """The subset of OpenAI's ``POST /v1/completions`` the simulator understands (plus
    llama.cpp's ``top_k``/``repeat_penalty``). Other fields are ignored."""

    model_config = ConfigDict(strict=False, extra="ignore")

    model: str | None = None
    prompt: str | list[str]
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 16
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    repeat_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: Annotated[bool, Strict()] = False
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream_options: dict[str, Any] | None = None

    def prompt_text(self) -> str:
        """The prompt as one string."""
        return self.prompt if isinstance(self.prompt, str) else "".join(self.prompt)

    def stop_list(self) -> list[str]:
        """Stop strings as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def job_params(self) -> JobParams:
        """The sampling fields as the core's :class:`~orchestrator_core.jobs.JobParams`."""
        return JobParams.from_mapping(self.model_dump() | {"stop": self.stop_list()})


@dataclass(eq=False)
class _Job:
    job_id: str
    prompt: str
    params: JobParams
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    disconnected: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _behind: int = 0

    @property
    def interrupted(self) -> bool:
        return self.cancelled or self.disconnected

    async def sleep_until(self, when: float) -> None:
        """Sleep until the monotonic time ``when`` or an interruption, whichever is first."""
        delay = when - time.monotonic()
        if self.interrupted:
            return
        if delay <= 0:
            self._behind += 1
            if self._behind % 32 == 0:  # unthrottled: let cancels and other streams in
                await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)

    async def hang(self) -> None:
        """Wait until cancelled, the client goes away or the engine dies."""
        await self.wake.wait()


class _Crash(Exception):
    """Raised inside a stream to drop the connection without a terminal event."""


Emit = Callable[[bytes], Awaitable[None]]


class _EventStream(Response):
    """A streaming response that notices a client going away and can drop its connection.

    ``produce`` writes frames through ``emit``; if it raises :class:`_Crash` the response is
    left incomplete, so the server closes the connection, exactly what a crashed engine looks
    like to a client.
    """

    def __init__(
        self,
        job: _Job,
        produce: Callable[[_Job, Emit], Awaitable[None]],
        headers: dict[str, str],
        on_done: Callable[[], None],
    ) -> None:
        # No super().__init__(): it would render an empty body and send Content-Length: 0.
        self.status_code = 200
        self.media_type = "text/event-stream"
        self.background = None
        self.init_headers(headers)
        self._job = job
        self._produce = produce
        self._on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = self._job

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    job.disconnected = True
                    job.wake.set()
                    return

        async def emit(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        watcher = asyncio.create_task(watch())
        crashed = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._produce(job, emit)
        except _Crash:
            crashed = True
        finally:
            watcher.cancel()
            self._on_done()
        if not crashed:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class SimulatedEngine:
    """A simulated LLM engine serving ``config.model_ref``; :attr:`app` is its ASGI app.

    ``on_crash`` is called when a fault with ``crash_scope="engine"`` fires; whoever runs the
    engine should then kill it (the CLI exits the process, the simulated pool stops the
    in-process server). ``started_at`` is when the model started loading (default: now).
    """

    def __init__(
        self,
        config: SimEngineConfig | None = None,
        faults: EngineFaults | None = None,
        *,
        on_crash: Callable[[], None] | None = None,
        started_at: float | None = None,
    ) -> None:
        self.config = config or SimEngineConfig()
        self.faults = faults or EngineFaults()
        self.stats = EngineStats()
        self.on_crash = on_crash
        self.started_at = time.monotonic() if started_at is None else started_at
        self.dead = False
        self._jobs: dict[str, _Job] = {}
        self._cancelled: OrderedDict[str, float] = OrderedDict()
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self.app = Starlette(
            routes=[
                Route("/execute", guarded(self._execute), methods=["POST"]),
                Route("/cancel", guarded(self._cancel), methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/sim/faults", self._get_faults, methods=["GET"]),
                Route("/sim/faults", self._set_faults, methods=["POST"]),
            ]
        )

    # -- state -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the simulated model load is over."""
        return time.monotonic() >= self.started_at + self.config.load_time_s

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` reports."""
        s = self.stats
        return {
            "status": "ok" if self.ready else "loading",
            "model": self.config.model_ref,
            "worker_id": self.config.worker_id,
            "active_jobs": s.active_jobs,
            "max_concurrency": self.config.max_concurrency,
            "jobs_completed": s.jobs_completed,
            "last_used_at": s.last_used_at,
            "current_job_id": s.current_job_id,
            "simulated": True,
        }

    def kill(self) -> None:
        """Die at once, as a killed engine process would: every open stream is dropped
        without a terminal event and no job is accepted any more."""
        self.dead = True
        for job in self._jobs.values():
            job.wake.set()

    def cancel(self, job_id: str) -> bool:
        """Cancel ``job_id``; True if it was running. A cancel for a job not (yet) running is
        remembered for a while, so a request arriving later ends at once as cancelled."""
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancelled = True
            job.wake.set()
            return True
        now = time.monotonic()
        self._cancelled[job_id] = now
        self._cancelled.move_to_end(job_id)
        while self._cancelled and (
            len(self._cancelled) > _CANCELLED_MEMORY
            or next(iter(self._cancelled.values())) < now - _CANCELLED_TTL_S
        ):
            self._cancelled.popitem(last=False)
        return False

    def _admit(self, job: _Job) -> None:
        """Refuse or register a new job (raises the error the client gets)."""
        if self.dead:
            raise EngineBusy(f"engine {self.config.worker_id} is shutting down")
        if not self.ready:
            raise EngineBusy(f"model {self.config.model_ref} is still loading")
        if self.faults.refuse:
            raise EngineBusy("simulated fault: this engine refuses work")
        if job.job_id in self._jobs:
            raise WorkerStateInvalid(self.config.worker_id, f"job {job.job_id} is already running")
        if (
            self.stats.active_jobs >= self.config.max_concurrency
            and not self.config.queue_when_busy
        ):
            raise EngineBusy(
                f"all {self.config.max_concurrency} slots of {self.config.worker_id} are busy"
            )
        if self._cancelled.pop(job.job_id, None) is not None:
            job.cancelled = True
        self._jobs[job.job_id] = job
        self.stats.active_jobs += 1
        self.stats.jobs_started += 1
        self.stats.current_job_id = job.job_id
        self.stats.last_used_at = time.time()

    def _release(self, job: _Job, outcome: str) -> None:
        if self._jobs.get(job.job_id) is job:
            del self._jobs[job.job_id]
            self.stats.active_jobs -= 1
        counters = {
            "completed": "jobs_completed",
            "failed": "jobs_failed",
            "cancelled": "jobs_cancelled",
        }
        if outcome in counters:
            name = counters[outcome]
            setattr(self.stats, name, getattr(self.stats, name) + 1)
        self.stats.last_used_at = time.time()
        if self.stats.current_job_id == job.job_id:
            self.stats.current_job_id = next(reversed(self._jobs), None) if self._jobs else None

    def _crash(self) -> None:
        if self.faults.crash_scope == "engine" and self.on_crash is not None:
            log.warning("simulated fault: engine %s crashes", self.config.worker_id)
            self.on_crash()
        raise _Crash

    # -- generation (shared by both protocols) -------------------------------------------

    async def _generate(
        self,
        job: _Job,
        on_token: Callable[[int, str], Awaitable[None]],
        on_metrics: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> tuple[str, int, str | None]:
        """Run ``job``; returns ``(outcome, tokens, finish_reason)`` where outcome is
        ``completed``, ``cancelled``, ``gone`` (client left), ``failed`` (engine error
        fault) or ``hung-cancelled``. Raises :class:`_Crash` for a crash fault."""
        cfg = self.config
        params = job.params
        source = TokenSource(
            job.prompt,
            seed=params.seed,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            eos_probability=cfg.eos_probability,
        )
        scanner = StopScanner(list(params.stop))
        first_due = job.started + cfg.ttft_s
        gap = 1.0 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
        generated = 0
        event_index = 0
        first_token_at: float | None = None
        finish: str = "length"

        def metrics() -> dict[str, Any]:
            elapsed = time.monotonic() - job.started
            rate = generated / elapsed if elapsed > 0 else 0.0
            ttft = (
                None if first_token_at is None else round((first_token_at - job.started) * 1e3, 3)
            )
            return {
                "tokens": generated,
                "elapsed_ms": round(elapsed * 1e3, 3),
                "ttft_ms": ttft,
                "tokens_per_s": round(rate, 3),
            }

        for n in range(params.max_tokens):
            faults = self.faults
            if faults.crash_after_tokens == n:
                self._crash()
            if faults.error_after_tokens == n:
                return "failed", generated, None
            if faults.hang_after_tokens == n:
                await job.hang()
            await job.sleep_until(first_due + n * gap)
            if self.dead:
                raise _Crash
            if job.cancelled:
                return "cancelled", generated, None
            if job.disconnected:
                return "gone", generated, None
            token = next(source)
            if token is None:
                finish = "stop"
                break
            generated += 1
            self.stats.tokens_generated += 1
            safe, stopped = scanner.feed(token)
            if safe:
                if first_token_at is None:
                    first_token_at = time.monotonic()
                await on_token(event_index, safe)
                event_index += 1
            if stopped:
                finish = "stop"
                break
            if generated % cfg.metrics_every == 0:
                await on_metrics(metrics())
        if not scanner.stopped:
            rest = scanner.flush()
            if rest:
                await on_token(event_index, rest)
        await on_metrics(metrics())
        return "completed", generated, finish

    # -- native worker protocol ----------------------------------------------------------

    async def _execute(self, request: Request, cid: str) -> Response:
        req = ExecuteRequest.parse(await read_json(request))
        job = _Job(req.job_id, req.prompt, req.job_params())
        self._admit(job)
        outcome = ["gone"]

        async def produce(job: _Job, emit: Emit) -> None:
            async with self._slots:
                await emit(
                    encode_event(
                        "started", {"job_id": job.job_id, "worker_id": self.config.worker_id}
                    )
                )

                async def on_token(i: int, text: str) -> None:
                    await emit(encode_event("token", {"i": i, "t": text}))

                async def on_metrics(data: dict[str, Any]) -> None:
                    await emit(encode_event("metrics", data))

                result, tokens, finish = await self._generate(job, on_token, on_metrics)
                outcome[0] = result
                if result == "completed":
                    await emit(encode_event("end", {"tokens": tokens, "finish_reason": finish}))
                elif result == "cancelled":
                    data = {"code": str(ErrorCode.CANCELLED), "message": "job cancelled"}
                    await emit(encode_event("error", data))
                elif result == "failed":
                    message = "simulated fault: engine error during generation"
                    data = {"code": str(ErrorCode.WORKER_FAILED), "message": message}
                    await emit(encode_event("error", data))

        def on_done() -> None:
            self._release(job, outcome[0])

        headers = {CORRELATION_HEADER: cid, "Cache-Control": "no-cache"}
        return _EventStream(job, produce, headers, on_done)

    async def _cancel(self, request: Request, cid: str) -> Response:
        req = CancelRequest.parse(await read_json(request))
        running = self.cancel(req.job_id)
        return JSONResponse(
            {"job_id": req.job_id, "cancelled": running},
            status_code=202,
            headers={CORRELATION_HEADER: cid},
        )

    async def _health(self, request: Request) -> Response:
        return JSONResponse(self.health(), status_code=200 if self.ready else 503)

    # -- OpenAI-compatible protocol ------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        if not self.ready:
            return _openai_error("Loading model", "unavailable_error", 503)
        created = int(time.time())
        model = {"id": self.config.model_ref, "object": "model", "created": created}
        model["owned_by"] = "llorch-sim"
        return JSONResponse({"object": "list", "data": [model]})

    async def _completions(self, request: Request) -> Response:
        try:
            req = OpenAiCompletionRequest.parse(await read_json(request))
        except RequestInvalid as exc:
            return _openai_error(exc.message, "invalid_request_error", 400)
        cmpl_id = f"cmpl-{uuid.uuid4().hex}"
        job = _Job(cmpl_id, req.prompt_text(), req.job_params())
        try:
            self._admit(job)
        except OrchestratorError as exc:
            return _openai_error(exc.message, "unavailable_error", exc.http_status)
        created = int(time.time())
        model = req.model or self.config.model_ref
        prompt_tokens = max(1, len(job.prompt.split()))

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            return {
                "id": cmpl_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }

        def usage(tokens: int) -> dict[str, int]:
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            }

        if not req.stream:
            return await self._complete_whole(job, chunk, usage)
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        outcome = ["gone"]

        async def produce(job: _Job, emit: Emit) -> None:
            async with self._slots:

                async def on_token(i: int, text: str) -> None:
                    await emit(encode_data(chunk(text, None)))

                async def on_metrics(data: dict[str, Any]) -> None:
                    return None

                result, tokens, finish = await self._generate(job, on_token, on_metrics)
                outcome[0] = result
                if result == "completed":
                    await emit(encode_data(chunk("", finish)))
                    if include_usage:
                        last = chunk("", None) | {"choices": [], "usage": usage(tokens)}
                        await emit(encode_data(last))
                    await emit(encode_data("[DONE]"))
                elif result == "failed":
                    err = {"message": "simulated fault: engine error", "type": "server_error"}
                    await emit(encode_data({"error": err | {"code": 500}}))

        def on_done() -> None:
            self._release(job, outcome[0])

        headers = {"Cache-Control": "no-cache", "X-Request-Id": cmpl_id}
        return _EventStream(job, produce, headers, on_done)

    async def _complete_whole(
        self,
        job: _Job,
        chunk: Callable[[str, str | None], dict[str, Any]],
        usage: Callable[[int], dict[str, int]],
    ) -> Response:
        parts: list[str] = []

        async def on_token(i: int, text: str) -> None:
            parts.append(text)

        async def on_metrics(data: dict[str, Any]) -> None:
            return None

        outcome = "gone"
        try:
            async with self._slots:
                outcome, tokens, finish = await self._generate(job, on_token, on_metrics)
        except _Crash:
            outcome = "failed"
            return _openai_error("simulated crash", "server_error", 500)
        finally:
            self._release(job, outcome)
        if outcome != "completed":
            return _openai_error("generation failed", "server_error", 500)
        body = chunk("".join(parts), finish) | {"usage": usage(tokens)}
        return JSONResponse(body)

    # -- simulator control -------------------------------------------------------------

    async def _get_faults(self, request: Request) -> Response:
        return JSONResponse(self.faults.model_dump(mode="json"))

    async def _set_faults(self, request: Request) -> Response:
        try:
            update = EngineFaults.parse(await read_json(request))
        except OrchestratorError as exc:
            return error_response(exc)
        self.faults = self.faults.merged(update)
        return JSONResponse(self.faults.model_dump(mode="json"))


def _openai_error(message: str, kind: str, status: int) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)
