"""The simulated engine: an ASGI app that serves one model like a real LLM engine would.

This is a **simulator** (a test and benchmark tool), not an engine: its tokens are made up
(:mod:`llorch_pool.sim.tokens`). It speaks both worker protocols of the project on the same
port:

* the native worker protocol (docs/pool-agent.md) — ``POST /execute`` (SSE ``started`` →
  ``token``* → ``metrics``* → ``end`` | ``error``) for a ``prompt`` or, a chat job, for
  ``messages`` rendered with the simulator's chat template
  (:func:`~llorch_pool.sim.tokens.render_chat`); ``POST /cancel``, ``GET /health``;
* the OpenAI-compatible protocol — ``POST /v1/completions`` and ``POST /v1/chat/completions``
  (``stream: true`` gives ``data: {...}`` chunks, a usage chunk with
  ``stream_options.include_usage``, and ``data: [DONE]``; a closed connection cancels),
  ``GET /v1/models`` (:mod:`llorch_pool.sim.openai_api`).

Timing model (:class:`SimEngineConfig`): the model is loading for ``load_time_s`` after the
engine starts (``/health`` and ``/v1/models`` answer 503, jobs are refused); a job's first
token comes ``ttft_s`` after its request; token *n* is due ``ttft_s + n / tokens_per_s``
after the request. ``ttft_s = 0`` and ``tokens_per_s = 0`` mean no delay at all: tokens are
sent as fast as the event loop and the client take them. Each of ``max_concurrency`` slots
runs one job at that rate; a request finding every slot taken is refused with 503 (or waits
for a slot with ``queue_when_busy``; a cancel or a client leaving ends the wait).

Fault injection (:class:`EngineFaults`, changeable at run time with ``POST /sim/faults``):
crash after N tokens (drop the connection with no terminal event; ``crash_scope="engine"``
also kills the whole engine), hang after N tokens (nothing more is sent until the job is
cancelled or the client goes away), an engine error after N tokens (a terminal ``error``
event ``WORKER_FAILED``), and refusing every job (503).

Observability: ``GET /sim/stats[?job_id=…]`` is the engine's
:class:`~llorch_pool.sim.ledger.JobLedger` — per job id when each run started and ended and
how (``completed``, ``cancelled`` by ``/cancel``, ``disconnected`` when the HTTP client went
away, ``failed``, ``crashed``), with counters — plus ``worker_id`` and ``model``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from orchestrator_core.api import ApiModel
from orchestrator_core.errors import ErrorCode, OrchestratorError, RequestInvalid
from orchestrator_core.jobs import JobParams
from orchestrator_core.sse import encode_data, encode_event
from pydantic import ConfigDict, Field
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
    WorkerProtocol,
    correlation_id_from,
)
from llorch_pool.serving import error_response, guarded, read_json
from llorch_pool.sim.ledger import JobLedger, JobRun, Outcome
from llorch_pool.sim.openai_api import (
    ChatShape,
    CompletionShape,
    OpenAiChatRequest,
    OpenAiCompletionRequest,
    openai_error,
)
from llorch_pool.sim.tokens import StopScanner, TokenSource, count_tokens, render_chat

__all__ = [
    "EngineFaults",
    "EngineStats",
    "OpenAiChatRequest",
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
    """Counters of one engine (partly reported by ``/health``; the per-job record is the
    engine's :class:`~llorch_pool.sim.ledger.JobLedger`, ``GET /sim/stats``)."""

    active_jobs: int = 0
    jobs_started: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    jobs_disconnected: int = 0
    jobs_crashed: int = 0
    tokens_generated: int = 0
    last_used_at: float | None = None
    current_job_id: str | None = None


@dataclass(eq=False)
class _Job:
    """One admitted request. ``job_id`` is what ``/cancel`` and the duplicate check go by
    (the native job id, or the engine's OpenAI request id); ``run`` is its ledger record."""

    job_id: str
    prompt: str
    params: JobParams
    run: JobRun
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    disconnected: bool = False
    outcome: Outcome = "crashed"  # until the generation says otherwise
    tokens: int = 0
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


class _Sink(Protocol):
    """Where a generation goes: one per protocol (native events, OpenAI chunks, a buffer)."""

    async def start(self) -> None:
        """The job got a slot: generation begins."""

    async def token(self, i: int, text: str) -> None:
        """Text to send (``i`` = index of the piece)."""

    async def metrics(self, data: dict[str, Any]) -> None:
        """Progress figures (native protocol only)."""


class _JobResponse(Response):
    """The answer to one admitted job: runs ``produce`` while watching for the HTTP client
    going away (``job.disconnected``), then calls ``on_done`` whatever happened.

    With ``stream=True`` the 200 ``text/event-stream`` head is sent first and ``produce``
    writes frames through ``emit``; if it raises :class:`_Crash` the response is left
    incomplete, so the server closes the connection, exactly what a crashed engine looks like
    to a client. With ``stream=False`` ``produce`` returns the response to send.
    """

    def __init__(
        self,
        job: _Job,
        produce: Callable[[Emit], Awaitable[Response | None]],
        headers: dict[str, str],
        on_done: Callable[[], None],
        *,
        stream: bool,
    ) -> None:
        # No super().__init__(): it would render an empty body and send Content-Length: 0.
        self.status_code = 200
        self.media_type = "text/event-stream"
        self.background = None
        self.init_headers(headers)
        self._job = job
        self._produce = produce
        self._on_done = on_done
        self._stream = stream

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
        answer: Response | None = None
        try:
            if self._stream:
                head = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                await send(head)
            answer = await self._produce(emit)
        except _Crash:
            crashed = True
        finally:
            watcher.cancel()
            self._on_done()
        if crashed:
            return
        if answer is not None:
            await answer(scope, receive, send)
        elif self._stream:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class _NativeSink:
    """Native SSE events."""

    def __init__(self, emit: Emit, job_id: str, worker_id: str) -> None:
        self._emit = emit
        self._started = {"job_id": job_id, "worker_id": worker_id}

    async def start(self) -> None:
        await self._emit(encode_event("started", self._started))

    async def token(self, i: int, text: str) -> None:
        await self._emit(encode_event("token", {"i": i, "t": text}))

    async def metrics(self, data: dict[str, Any]) -> None:
        await self._emit(encode_event("metrics", data))


class _OpenAiChunks:
    """OpenAI ``data:`` chunks of one completion or chat completion."""

    def __init__(self, emit: Emit, shape: CompletionShape) -> None:
        self._emit = emit
        self._shape = shape

    async def start(self) -> None:
        opening = self._shape.opening()
        if opening is not None:
            await self._emit(encode_data(opening))

    async def token(self, i: int, text: str) -> None:
        await self._emit(encode_data(self._shape.delta(text)))

    async def metrics(self, data: dict[str, Any]) -> None:
        return None


class _Buffer:
    """The whole text, for a non-streamed answer."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    async def start(self) -> None:
        return None

    async def token(self, i: int, text: str) -> None:
        self.parts.append(text)

    async def metrics(self, data: dict[str, Any]) -> None:
        return None


class SimulatedEngine:
    """A simulated LLM engine serving ``config.model_ref``; :attr:`app` is its ASGI app.

    ``on_crash`` is called when a fault with ``crash_scope="engine"`` fires; whoever runs the
    engine should then kill it (the CLI exits the process, the simulated pool stops the
    in-process server). ``started_at`` is when the model started loading (default: now).
    ``ledger`` records its runs (``GET /sim/stats``; default: a ledger of its own — give one
    with a ``parent`` to gather the runs of several engines).
    """

    def __init__(
        self,
        config: SimEngineConfig | None = None,
        faults: EngineFaults | None = None,
        *,
        on_crash: Callable[[], None] | None = None,
        started_at: float | None = None,
        ledger: JobLedger | None = None,
    ) -> None:
        self.config = config or SimEngineConfig()
        self.faults = faults or EngineFaults()
        self.stats = EngineStats()
        self.ledger = ledger or JobLedger()
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
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/sim/faults", self._get_faults, methods=["GET"]),
                Route("/sim/faults", self._set_faults, methods=["POST"]),
                Route("/sim/stats", self._get_stats, methods=["GET"]),
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

    def stats_json(self, job_ids: list[str] | None = None) -> dict[str, Any]:
        """What ``GET /sim/stats`` reports: ``worker_id``, ``model`` and the ledger's
        ``counters`` and ``jobs`` (only ``job_ids``, when given)."""
        cfg = self.config
        return {"worker_id": cfg.worker_id, "model": cfg.model_ref} | self.ledger.snapshot(job_ids)

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

    def _new_job(
        self,
        job_id: str,
        prompt: str,
        params: JobParams,
        *,
        protocol: WorkerProtocol,
        kind: str,
        key: str,
        correlation_id: str | None,
    ) -> _Job:
        run = JobRun(
            job_id=key,
            worker_id=self.config.worker_id,
            protocol=str(protocol),
            kind=kind,
            request_id=job_id,
            correlation_id=correlation_id,
            prompt_tokens=count_tokens(prompt),
        )
        return _Job(job_id, prompt, params, run)

    def _refusal(self, job: _Job) -> OrchestratorError | None:
        if self.dead:
            return EngineBusy(f"engine {self.config.worker_id} is shutting down")
        if not self.ready:
            return EngineBusy(f"model {self.config.model_ref} is still loading")
        if self.faults.refuse:
            return EngineBusy("simulated fault: this engine refuses work")
        if job.job_id in self._jobs:
            return WorkerStateInvalid(self.config.worker_id, f"job {job.job_id} is already running")
        if (
            self.stats.active_jobs >= self.config.max_concurrency
            and not self.config.queue_when_busy
        ):
            return EngineBusy(
                f"all {self.config.max_concurrency} slots of {self.config.worker_id} are busy"
            )
        return None

    def _admit(self, job: _Job) -> None:
        """Refuse or register a new job (raises the error the client gets)."""
        refusal = self._refusal(job)
        if refusal is not None:
            self.ledger.refused()
            raise refusal
        if self._cancelled.pop(job.job_id, None) is not None:
            job.cancelled = True
            job.wake.set()
        self._jobs[job.job_id] = job
        self.stats.active_jobs += 1
        self.stats.jobs_started += 1
        self.stats.current_job_id = job.job_id
        self.stats.last_used_at = time.time()
        job.run.started_at = time.time()
        self.ledger.start(job.run)

    def _release(self, job: _Job) -> None:
        if self._jobs.get(job.job_id) is job:
            del self._jobs[job.job_id]
            self.stats.active_jobs -= 1
        name = f"jobs_{job.outcome}"
        if hasattr(self.stats, name):
            setattr(self.stats, name, getattr(self.stats, name) + 1)
        self.stats.last_used_at = time.time()
        if self.stats.current_job_id == job.job_id:
            self.stats.current_job_id = next(reversed(self._jobs), None) if self._jobs else None
        self.ledger.finish(job.run, job.outcome, job.tokens)

    def _crash(self) -> None:
        if self.faults.crash_scope == "engine" and self.on_crash is not None:
            log.warning("simulated fault: engine %s crashes", self.config.worker_id)
            self.on_crash()
        raise _Crash

    def _stopped(self, job: _Job) -> Outcome | None:
        """Why ``job`` must stop now, if it must; raises :class:`_Crash` if the engine died."""
        if self.dead:
            raise _Crash
        if job.cancelled:
            return "cancelled"
        if job.disconnected:
            return "disconnected"
        return None

    # -- generation (shared by every protocol) -------------------------------------------

    async def _take_slot(self, job: _Job) -> bool:
        """Wait for a free slot; False when the job is interrupted (or the engine dies)
        first."""
        if not self._slots.locked():
            await self._slots.acquire()
            return True
        acquire = asyncio.ensure_future(self._slots.acquire())
        woken = asyncio.ensure_future(job.wake.wait())
        try:
            await asyncio.wait((acquire, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not acquire.done():
                acquire.cancel()
                await asyncio.wait((acquire,))
        if acquire.cancelled():
            return False
        acquire.result()
        return True

    async def _run(self, job: _Job, sink: _Sink) -> tuple[Outcome, str | None]:
        """Run ``job`` in a slot: ``(outcome, finish_reason)``, ``job.outcome`` and
        ``job.tokens`` set; raises :class:`_Crash` for a crash."""
        got_slot = await self._take_slot(job)
        try:
            await sink.start()
            if got_slot:
                outcome, finish = await self._generate(job, sink)
            else:
                outcome, finish = self._stopped(job) or "cancelled", None
        finally:
            if got_slot:
                self._slots.release()
        job.outcome = outcome
        return outcome, finish

    async def _generate(self, job: _Job, sink: _Sink) -> tuple[Outcome, str | None]:
        """Generate ``job``'s tokens into ``sink``; ``(outcome, finish_reason)`` where
        outcome is ``completed``, ``cancelled``, ``disconnected`` or ``failed`` (engine
        error fault). Raises :class:`_Crash` for a crash fault or a dead engine."""
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
        event_index = 0
        first_token_at: float | None = None
        finish: str = "length"

        def metrics() -> dict[str, Any]:
            elapsed = time.monotonic() - job.started
            rate = job.tokens / elapsed if elapsed > 0 else 0.0
            ttft = (
                None if first_token_at is None else round((first_token_at - job.started) * 1e3, 3)
            )
            return {
                "tokens": job.tokens,
                "elapsed_ms": round(elapsed * 1e3, 3),
                "ttft_ms": ttft,
                "tokens_per_s": round(rate, 3),
            }

        for n in range(params.max_tokens):
            faults = self.faults
            if faults.crash_after_tokens == n:
                self._crash()
            if faults.error_after_tokens == n:
                return "failed", None
            if faults.hang_after_tokens == n:
                await job.hang()
            await job.sleep_until(first_due + n * gap)
            stopped = self._stopped(job)
            if stopped is not None:
                return stopped, None
            token = next(source)
            if token is None:
                finish = "stop"
                break
            job.tokens += 1
            self.stats.tokens_generated += 1
            safe, hit_stop = scanner.feed(token)
            if safe:
                if first_token_at is None:
                    first_token_at = time.monotonic()
                await sink.token(event_index, safe)
                event_index += 1
            if hit_stop:
                finish = "stop"
                break
            if job.tokens % cfg.metrics_every == 0:
                await sink.metrics(metrics())
        if not scanner.stopped:
            rest = scanner.flush()
            if rest:
                await sink.token(event_index, rest)
        await sink.metrics(metrics())
        return "completed", finish

    # -- native worker protocol ----------------------------------------------------------

    async def _execute(self, request: Request, cid: str) -> Response:
        req = ExecuteRequest.parse(await read_json(request))
        if req.messages is not None:
            prompt = render_chat((m.role, m.content) for m in req.messages)
        else:
            prompt = req.prompt or ""
        job = self._new_job(
            req.job_id,
            prompt,
            req.job_params(),
            protocol=WorkerProtocol.NATIVE,
            kind="chat" if req.is_chat else "completion",
            key=req.job_id,
            correlation_id=cid,
        )
        self._admit(job)

        async def produce(emit: Emit) -> None:
            sink = _NativeSink(emit, job.job_id, self.config.worker_id)
            outcome, finish = await self._run(job, sink)
            if outcome == "completed":
                end = {
                    "tokens": job.tokens,
                    "finish_reason": finish,
                    "prompt_tokens": job.run.prompt_tokens,
                    "completion_tokens": job.tokens,
                }
                await emit(encode_event("end", end))
            elif outcome == "cancelled":
                data = {"code": str(ErrorCode.CANCELLED), "message": "job cancelled"}
                await emit(encode_event("error", data))
            elif outcome == "failed":
                message = "simulated fault: engine error during generation"
                data = {"code": str(ErrorCode.WORKER_FAILED), "message": message}
                await emit(encode_event("error", data))

        headers = {CORRELATION_HEADER: cid, "Cache-Control": "no-cache"}
        return _JobResponse(job, produce, headers, lambda: self._release(job), stream=True)

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
            return openai_error("Loading model", "unavailable_error", 503)
        created = int(time.time())
        model = {"id": self.config.model_ref, "object": "model", "created": created}
        model["owned_by"] = "llorch-sim"
        return JSONResponse({"object": "list", "data": [model]})

    async def _completions(self, request: Request) -> Response:
        try:
            req = OpenAiCompletionRequest.parse(await read_json(request))
        except RequestInvalid as exc:
            return openai_error(exc.message, "invalid_request_error", 400)
        shape = CompletionShape(req.model or self.config.model_ref, include_usage=req.include_usage)
        return self._serve_openai(request, req, shape)

    async def _chat_completions(self, request: Request) -> Response:
        try:
            req = OpenAiChatRequest.parse(await read_json(request))
        except RequestInvalid as exc:
            return openai_error(exc.message, "invalid_request_error", 400)
        shape = ChatShape(req.model or self.config.model_ref, include_usage=req.include_usage)
        return self._serve_openai(request, req, shape)

    def _serve_openai(
        self,
        request: Request,
        req: OpenAiCompletionRequest | OpenAiChatRequest,
        shape: CompletionShape,
    ) -> Response:
        """One OpenAI request, streamed or not; ``shape`` makes its JSON objects."""
        sent_cid = request.headers.get(CORRELATION_HEADER)
        cid = (
            sent_cid if sent_cid is not None and correlation_id_from(sent_cid) == sent_cid else None
        )
        job = self._new_job(
            shape.id,
            req.prompt_text(),
            req.job_params(),
            protocol=WorkerProtocol.OPENAI,
            kind=shape.kind,
            key=cid or shape.id,
            correlation_id=cid,
        )
        try:
            self._admit(job)
        except OrchestratorError as exc:
            return openai_error(exc.message, "unavailable_error", exc.http_status)
        headers = {"X-Request-Id": shape.id}

        def usage() -> dict[str, int]:
            prompt = job.run.prompt_tokens
            return {
                "prompt_tokens": prompt,
                "completion_tokens": job.tokens,
                "total_tokens": prompt + job.tokens,
            }

        async def whole(emit: Emit) -> Response:
            buffer = _Buffer()
            try:
                outcome, finish = await self._run(job, buffer)
            except _Crash:
                return openai_error("simulated crash", "server_error", 500)
            if outcome != "completed" or finish is None:
                return openai_error("generation failed", "server_error", 500)
            body = shape.whole("".join(buffer.parts), finish, usage())
            return JSONResponse(body, headers=headers)

        async def chunks(emit: Emit) -> None:
            outcome, finish = await self._run(job, _OpenAiChunks(emit, shape))
            if outcome == "completed" and finish is not None:
                await emit(encode_data(shape.final(finish)))
                if shape.include_usage:
                    await emit(encode_data(shape.usage_chunk(usage())))
                await emit(encode_data("[DONE]"))
            elif outcome == "failed":
                err = {"message": "simulated fault: engine error", "type": "server_error"}
                await emit(encode_data({"error": err | {"code": 500}}))

        if not req.stream:
            return _JobResponse(job, whole, headers, lambda: self._release(job), stream=False)
        headers["Cache-Control"] = "no-cache"
        return _JobResponse(job, chunks, headers, lambda: self._release(job), stream=True)

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

    async def _get_stats(self, request: Request) -> Response:
        job_ids = request.query_params.getlist("job_id") or None
        return JSONResponse(self.stats_json(job_ids))
