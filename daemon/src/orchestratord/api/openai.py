"""``/v1``: the OpenAI-compatible front door — completions, chat completions and models.

A request becomes a job exactly as ``POST /v2/tasks`` does (same admission: model, context,
quota, capacity, 429 with ``Retry-After``, the durable commit before the first byte of the
answer, then the active policy schedules it), with its kind (``completion`` or ``chat``). The
job's events are then answered in OpenAI's wire format: ``data:`` chunks ending with
``data: [DONE]`` when ``stream`` is true, else one JSON object with ``choices`` and ``usage``.

* **Priority**: the body's ``priority`` (what the ``openai`` SDK sends through
  ``extra_body``), else the ``X-Priority`` header, else ``interactive``.
* **Tenant**: from the bearer token, as for ``/v2``.
* **Session**: ``X-Session-Id``, else one derived from ``user``.
* **Client gone = job cancelled**: a client that closes its connection cancels its job at
  once (no reconnect grace, no resume on ``/v1``), which closes the engine's stream.
* **Usage**: ``completion_tokens`` are the tokens relayed; ``prompt_tokens`` the engine's
  count when it reports one, else the daemon's estimate (UTF-8 bytes / 4).
* **Errors** are OpenAI's ``{"error": {message, type, param, code}}`` with our stable code in
  ``code`` and the HTTP status of the code table (see :mod:`orchestratord.api.errors`).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from orchestrator_core import (
    ErrorCode,
    ModelNotFound,
    OrchestratorError,
    PoolStatus,
    Priority,
    RequestInvalid,
    WorkerStatus,
)
from orchestrator_core.errors import FieldError
from orchestrator_core.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIRequest,
    ResponseBuilder,
    model_list,
    model_object,
    openai_error,
)

from orchestratord.api.exchange import Exchange
from orchestratord.api.openapi import body, openai_errors, served_on_the_fast_lane
from orchestratord.auth import Authenticator
from orchestratord.orchestrator import Orchestrator
from orchestratord.services.admission import JobSpec, estimate_prompt_tokens
from orchestratord.store import StoredEvent

__all__ = ["hot_handlers", "router"]

KEEPALIVE_S = 15.0
_PRIORITIES = ("interactive", "batch")
_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer: one JSON object, or (stream: true) an SSE stream of chunks"
        " ending with data: [DONE]",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
}


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


_DONE = b"data: [DONE]\n\n"
_KEEPALIVE = b": keepalive\n\n"


def _priority(header: str | None, req: OpenAIRequest) -> Priority:
    if header is not None and header.strip().lower() not in _PRIORITIES:
        raise RequestInvalid(
            [
                FieldError(
                    "X-Priority",
                    ErrorCode.INVALID_PARAMETER,
                    f"X-Priority: must be interactive or batch, got {header[:40]!r}",
                )
            ]
        )
    return req.priority_or(header.strip().lower() if header else Priority.INTERACTIVE)


def _session(header: str | None, req: OpenAIRequest) -> str | None:
    if header is not None and not 1 <= len(header) <= 128:
        raise RequestInvalid(
            [
                FieldError(
                    "X-Session-Id",
                    ErrorCode.INVALID_PARAMETER,
                    "X-Session-Id: must be 1 to 128 characters",
                )
            ]
        )
    return req.session_id_or(header)


class _Answer:
    """Turns one admitted job's events into the OpenAI answer (streamed or whole)."""

    def __init__(
        self,
        orch: Orchestrator,
        job_id: str,
        req: OpenAIRequest,
        batches: AsyncIterator[list[StoredEvent] | None],
        cancel: Callable[[], None],
    ) -> None:
        self.orch = orch
        self.job_id = job_id
        self.req = req
        self.batches = batches
        """The job's events in batches (this daemon's, or the leader's through the bus)."""
        self._cancel = cancel
        self.builder = ResponseBuilder(
            kind=req.kind, job_id=job_id, model=req.model, created=int(orch.ctx.clock())
        )
        self.finished = False

    def usage_of(self, end: StoredEvent) -> tuple[int, int]:
        """``(prompt_tokens, completion_tokens)`` of a completed job."""
        data = end.payload()
        prompt = data.get("prompt_tokens")
        if not isinstance(prompt, int) or prompt < 0:
            prompt = estimate_prompt_tokens(self.req.input_text())
        tokens = data.get("tokens")
        return prompt, tokens if isinstance(tokens, int) and tokens >= 0 else 0

    @staticmethod
    def error_of(terminal: StoredEvent) -> OrchestratorError:
        """The job's ``error`` event as an error with our stable code."""
        data = terminal.payload()
        try:
            code = ErrorCode(str(data.get("code")))
        except ValueError:
            code = ErrorCode.INTERNAL
        return OrchestratorError(str(data.get("message") or code), code=code)

    def cancel(self) -> None:
        """The client went away before the end: cancel its job at once."""
        if not self.finished:
            self._cancel()

    def ending(self, terminal: StoredEvent) -> list[bytes]:
        """The last chunks of a stream: the final chunk (and usage) then ``[DONE]``, or the
        error then ``[DONE]``."""
        self.finished = True
        b = self.builder
        if terminal.kind == "error":
            return [_sse(openai_error(self.error_of(terminal))), _DONE]
        out = [_sse(b.final_chunk(str(terminal.payload().get("finish_reason", "stop"))))]
        if self.req.include_usage:
            out.append(_sse(b.usage_chunk(*self.usage_of(terminal))))
        out.append(_DONE)
        return out

    async def stream(self, ex: Exchange) -> None:
        """The SSE answer (``stream: true``): each batch of events the job published since
        the last write goes out in one write."""
        b = self.builder
        before, after = b.chunk_parts()
        head = (b"data: " + before.encode(), (after + "\n\n").encode())
        out = [_sse(chunk) for chunk in b.start_chunks()]
        await ex.start_sse({"X-Job-Id": self.job_id})
        try:
            async for batch in self.batches:
                if batch is None:
                    out.append(_KEEPALIVE)
                for ev in batch or ():
                    if ev.kind == "token":
                        text = orjson.loads(ev.data).get("t", "")
                        out += (head[0], orjson.dumps(text), head[1])
                    elif ev.terminal:
                        out += self.ending(ev)
                if self.finished:
                    break
                if out:
                    await ex.write(b"".join(out))
                    out.clear()
            await ex.end(b"".join(out))
        finally:
            self.cancel()

    async def whole(self, ex: Exchange) -> None:
        """The one-object answer (``stream: false``)."""
        texts: list[str] = []
        terminal: StoredEvent | None = None
        async for batch in self.batches:
            for ev in batch or ():
                if ev.kind == "token":
                    texts.append(str(ev.payload().get("t", "")))
                elif ev.terminal:
                    terminal = ev
        if terminal is None:
            raise OrchestratorError(
                "the job's stream ended without an end", code=ErrorCode.INTERNAL
            )
        self.finished = True
        if terminal.kind == "error":
            raise self.error_of(terminal)
        reason = str(terminal.payload().get("finish_reason", "stop"))
        answer = self.builder.response("".join(texts), reason, *self.usage_of(terminal))
        await ex.json(answer, headers={"X-Job-Id": self.job_id})


async def _serve(
    orch: Orchestrator, auth: Authenticator, kind: type[OpenAIRequest], ex: Exchange
) -> None:
    who = auth.authenticate(ex.header(b"authorization"), "client")
    req = kind.parse(await ex.body(orch.config.server.max_body_bytes))
    spec = JobSpec(
        model=req.model,
        prompt=req.prompt_text(),
        input_text=req.input_text(),
        params=req.job_params(),
        priority=_priority(ex.header(b"x-priority"), req),
        session_id=_session(ex.header(b"x-session-id"), req),
        kind=req.kind,
    )
    reply = await orch.admission.submit_spec(spec, principal=who, correlation_id=ex.cid)
    answer = _Answer(orch, reply.job_id, req, *_feed(orch, reply.job_id))
    ex.on_disconnect(answer.cancel)  # client gone = job cancelled, at once
    if req.stream:
        await answer.stream(ex)
    else:
        await answer.whole(ex)


def _feed(
    orch: Orchestrator, job_id: str
) -> tuple[AsyncIterator[list[StoredEvent] | None], Callable[[], None]]:
    """The events of a job just admitted here, and how to cancel it: this daemon runs it
    (the leader), or the leader does (a follower: its events come through the bus)."""
    a = orch.ctx.jobs.stream_of(job_id)
    if a is not None:

        def stop() -> None:
            if not a.terminal_sent:
                orch.ctx.tasks.spawn(orch.lifecycle.stop_job(a, "disconnected"), name="gone")

        return a.stream.follow_batches(0, idle_s=KEEPALIVE_S), stop
    if orch.remote is not None:
        return orch.remote.follow_batches(job_id, 0, idle_s=KEEPALIVE_S), (
            lambda: orch.request_cancel(job_id)
        )
    raise OrchestratorError("the job vanished", code=ErrorCode.INTERNAL)  # cannot happen


def hot_handlers(
    orch: Orchestrator, auth: Authenticator
) -> dict[str, Callable[[Exchange], Awaitable[None]]]:
    """``POST /v1/completions`` and ``POST /v1/chat/completions``, served on the fast lane
    (:mod:`orchestratord.api.fastlane`)."""
    return {
        path: functools.partial(_serve, orch, auth, kind) for path, kind, _ in _COMPLETION_ROUTES
    }


_COMPLETION_ROUTES: tuple[tuple[str, type[OpenAIRequest], str], ...] = (
    ("/v1/completions", CompletionRequest, "completion of one prompt (streamed or whole)"),
    ("/v1/chat/completions", ChatCompletionRequest, "chat completion (the engine's template)"),
)


def _models(orch: Orchestrator) -> dict[str, tuple[str, list[str]]]:
    """Every model a client may name: canonical id -> (state, aliases). ``loaded``: a ready
    or busy worker serves it; ``loading``: a worker is starting; ``available``: a pool that
    is not offline can load it; ``configured``: only in the catalog."""
    rank = {"configured": 0, "available": 1, "loading": 2, "loaded": 3}
    state = orch.ctx.cluster.state
    out: dict[str, tuple[str, list[str]]] = {
        m.model_ref: ("configured", list(m.aliases)) for m in state.catalog
    }

    def see(name: str, what: str) -> None:
        ref = state.catalog.resolve(name)
        old, aliases = out.get(ref, ("configured", []))
        out[ref] = (what if rank[what] > rank[old] else old, aliases)

    for pool in orch.ctx.cluster.pools():
        if pool.status is PoolStatus.OFFLINE:
            continue
        for name in pool.models:
            see(name, "available")
        for w in pool.workers:
            if w.status in (WorkerStatus.READY, WorkerStatus.BUSY):
                see(w.model_ref, "loaded")
            elif w.status is WorkerStatus.STARTING:
                see(w.model_ref, "loading")
    return out


def router(orch: Orchestrator, auth: Authenticator) -> APIRouter:
    """The ``/v1`` routes over ``orch``."""
    api = APIRouter(tags=["openai"])
    created = int(orch.ctx.clock())

    for path, kind, summary in _COMPLETION_ROUTES:
        api.add_api_route(
            path,
            served_on_the_fast_lane,
            methods=["POST"],
            response_class=Response,
            responses={**_ANSWERS, **openai_errors(400, 404, 413, 429, 502, 503, 504)},
            openapi_extra=body(kind.__name__),
            summary=f"OpenAI-compatible {summary}",
            name=kind.__name__,
        )

    @api.get(
        "/v1/models",
        responses={
            200: {"description": "The models", "content": {"application/json": {}}},
            **openai_errors(),
        },
        summary="Models of the catalog and of the pools, with their state",
    )
    async def models(request: Request) -> JSONResponse:
        auth.authenticate(request.headers.get("authorization"), "client")
        objects = [
            model_object(ref, created=created, state=st, details={"aliases": aliases})
            for ref, (st, aliases) in sorted(_models(orch).items())
        ]
        return JSONResponse(model_list(objects))

    @api.get(
        "/v1/models/{model_id:path}",
        responses={
            200: {"description": "One model", "content": {"application/json": {}}},
            **openai_errors(404),
        },
        summary="One model (by id or alias)",
    )
    async def one_model(request: Request, model_id: str) -> JSONResponse:
        auth.authenticate(request.headers.get("authorization"), "client")
        known = _models(orch)
        ref = orch.ctx.cluster.canonical_model(model_id)
        if ref not in known:
            raise ModelNotFound(model_id)
        st, aliases = known[ref]
        return JSONResponse(
            model_object(ref, created=created, state=st, details={"aliases": aliases})
        )

    return api
