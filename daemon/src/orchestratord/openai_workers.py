"""The worker client for OpenAI-compatible engines (vLLM, llama.cpp's server, SGLang, Ollama).

One job is one streamed completion, or one streamed chat completion for a chat job (the
engine applies its own chat template)::

    POST {worker}/v1/completions  {model, prompt, max_tokens, temperature, top_p, stop, seed,
                                   top_k?, repetition_penalty, repeat_penalty,
                                   presence_penalty?, frequency_penalty?,
                                   stream: true, stream_options: {include_usage: true}}
         -> text/event-stream of  data: {"choices": [{"text", "finish_reason"}], "usage"?}
                                  data: [DONE]
    POST {worker}/v1/chat/completions  {model, messages, ...the same...}
         -> text/event-stream of  data: {"choices": [{"delta": {"content"}, "finish_reason"}]}

mapped to the daemon's worker events (docs/design/http-api.md, *Calls the daemon makes*):

=====================================  ================================================
engine                                  :class:`~orchestratord.workers.WorkerEvent`
=====================================  ================================================
2xx answer (stream opens)               ``started {job_id, engine_request_id}``
chunk with non-empty ``text``           ``token {i, t}`` (``i`` = 0, 1, …); consecutive
                                        chunks read at once: one ``tokens {i, t: [...]}``
``data: [DONE]``                        ``metrics {tokens, elapsed_ms, ttft_ms,
                                        tokens_per_s, usage?}`` then ``end {tokens,
                                        finish_reason, prompt_tokens?, completion_tokens?}``
``data: {"error": …}`` mid-stream       ``error {code: WORKER_FAILED}`` (transient)
400/413/422 before the stream           ``error {code: CONTEXT_TOO_LARGE}`` when the engine
                                        says the context is exceeded, else
                                        ``error {code: INVALID_PARAMETER}`` (not retried)
other non-2xx (503 busy, 429, 5xx, …),  :class:`~orchestratord.workers.WorkerUnreachable`
connection refused, a stream that        (retried; DISPATCH_FAILED when attempts run out)
breaks *before the first token*
a stream that breaks, or ends without   :class:`~orchestratord.workers.WorkerLost`
a ``finish_reason``, *after a token*    (the job fails WORKER_FAILED)
=====================================  ================================================

``finish_reason`` is normalised to ``"stop"`` (stop, eos, stop_sequence, content_filter) or
``"length"`` (length, max_tokens); the engine's own word is kept as
``engine_finish_reason`` when it differs.

**Reading.** The stream is read in whatever the socket delivers (aiohttp's ``readany``) and
split into SSE events at the bytes level (:class:`~orchestrator_core.sse.SseByteDecoder`);
the tokens of one read become one event (see :class:`~orchestratord.workers.WorkerEvent`).

**Cancellation.** The OpenAI API has no cancel call: closing the connection is how vLLM,
SGLang and llama.cpp's server abort a request. :meth:`OpenAIWorkerClient.cancel` therefore
closes the job's connection at once — while the request is still waiting for the engine's
answer (it runs in a task of its own until the headers arrive, which is cancelled) or during
the stream (the response is closed, whether or not the job's consumer is reading) — and the
job's event stream ends with ``error {code: CANCELLED}``. A cancel that arrives before its
job's ``execute`` is remembered for two minutes.

``repetition_penalty`` (vLLM, SGLang) and ``repeat_penalty`` (llama.cpp) are both sent, so
llama.cpp's own default (1.1) never silently replaces the job's value; ``top_k`` only when
it is set (> 0), since engines disagree on how to spell "disabled". No ``X-Request-Id`` is
sent: llama-cpp-python's server answers 400 to one that is not a UUID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from orchestrator_core.sse import SseByteDecoder

from orchestratord.workers import (
    CONNECT_ERRORS,
    STREAM_ERRORS,
    ExecuteRequest,
    HttpSessions,
    WorkerEvent,
    WorkerLost,
    WorkerUnreachable,
    drain_response,
    loads,
    post_json,
    token_batch,
)

__all__ = ["OpenAIWorkerClient", "normalise_finish_reason"]

_FINISH_REASONS = {
    "stop": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "content_filter": "stop",
    "length": "length",
    "max_tokens": "length",
}
_CONTEXT_WORDS = re.compile(
    r"context|too long|maximum .*length|exceeds? .*(length|tokens)|prompt .*tokens", re.I
)
_PERMANENT_STATUSES = frozenset({400, 413, 422})
_EARLY_CANCEL_TTL_S = 120.0
_EARLY_CANCEL_MEMORY = 4096
_CLOSE_WAIT_S = 1.0


def normalise_finish_reason(reason: str | None) -> str:
    """The daemon's ``finish_reason`` (``"stop"`` or ``"length"``) for an engine's word;
    anything unknown (or none) counts as ``"stop"``."""
    return _FINISH_REASONS.get((reason or "stop").lower(), "stop")


def _chunk_text(choice: dict[str, Any]) -> str:
    """The text a chunk's choice carries: ``text`` (completions) or ``delta.content``
    (chat); empty when it carries none (e.g. the role-only first chat chunk)."""
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    return text if isinstance(text, str) else ""


def _engine_message(raw: bytes) -> str:
    """The human message of an engine's error body (OpenAI, FastAPI or plain text)."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:300]
    return text[:300]


@dataclass(eq=False)
class _Stream:
    """One running completion: how far it got, and what :meth:`OpenAIWorkerClient.cancel`
    closes."""

    job_id: str
    opening: asyncio.Task[aiohttp.ClientResponse] | None = None
    """The request until the engine's answer arrives."""
    response: aiohttp.ClientResponse | None = None
    tokens: int = 0
    cancelled: bool = False
    t0: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    finish: str | None = None
    """The engine's last ``finish_reason``."""
    usage: dict[str, Any] | None = None
    """The engine's ``usage``, when it sent one."""
    done: bool = False
    """``[DONE]`` after a ``finish_reason``: the completion is whole."""
    failed: bool = False
    """The engine sent an error chunk (the last event is its ``error``)."""
    fault: str | None = None
    """Why the stream is broken (e.g. ``[DONE]`` without a ``finish_reason``)."""


def _cancelled() -> WorkerEvent:
    return WorkerEvent("error", {"code": "CANCELLED", "message": "cancelled"})


def _was_cancelled(stream: _Stream) -> bool:
    """``stream`` was cancelled by :meth:`OpenAIWorkerClient.cancel`, not the task reading
    it."""
    task = asyncio.current_task()
    return stream.cancelled and (task is None or not task.cancelling())


async def _close(resp: aiohttp.ClientResponse) -> None:
    """Close ``resp``'s connection (unless it went back to the pool) and wait until its socket
    is closed — the engine sees the request aborted even if the loop is busy next."""
    connection = resp.connection
    protocol = None if connection is None else connection.protocol
    closed = None if protocol is None else protocol.closed  # (a protocol with no data is falsy)
    resp.close()
    if closed is not None:
        with contextlib.suppress(*STREAM_ERRORS, OSError):
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await closed


class OpenAIWorkerClient:
    """:class:`~orchestratord.workers.WorkerClient` for OpenAI-compatible engines (see the
    module docstring for the mapping), over one pooled aiohttp session.

    ``connect_timeout_s`` bounds reaching the engine; ``read_timeout_s`` bounds the silence
    between two chunks (an engine that stops talking is treated as lost). ``api_key`` is sent
    as a bearer token (vLLM's ``--api-key``)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
        api_key: str | None = None,
    ) -> None:
        self._http = HttpSessions(
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s
        )
        self._api_key = api_key
        self._streams: dict[str, _Stream] = {}
        self._early_cancels: OrderedDict[str, float] = OrderedDict()

    @staticmethod
    def path(request: ExecuteRequest) -> str:
        """The engine's route for ``request``: chat or plain completions."""
        return "/v1/chat/completions" if request.is_chat else "/v1/completions"

    @staticmethod
    def body(request: ExecuteRequest) -> dict[str, Any]:
        """The ``/v1/completions`` (or ``/v1/chat/completions``) body for ``request``."""
        body: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "repetition_penalty": request.repetition_penalty,
            "repeat_penalty": request.repetition_penalty,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.model:
            body["model"] = request.model
        if request.top_k > 0:
            body["top_k"] = request.top_k
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        for penalty in ("presence_penalty", "frequency_penalty"):
            value = getattr(request, penalty, 0.0)
            if value:
                body[penalty] = value
        if request.messages is not None:
            body["messages"] = [dict(m) for m in request.messages]
        else:
            body["prompt"] = request.prompt
        return body

    async def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        """See :class:`~orchestratord.workers.WorkerClient`."""
        if self._take_early_cancel(request.job_id):
            yield _cancelled()
            return
        headers = {
            "X-Correlation-Id": correlation_id,
            "Accept": "text/event-stream",
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = worker_uri.rstrip("/") + self.path(request)
        stream = _Stream(request.job_id)
        self._streams[request.job_id] = stream
        try:
            opened = await self._open(stream, url, self.body(request), headers)
            if opened is not None:  # refused, or cancelled before the answer
                yield opened
                return
            resp = stream.response
            assert resp is not None
            request_id = resp.headers.get("x-request-id")
            yield WorkerEvent("started", {"job_id": stream.job_id, "engine_request_id": request_id})
            if stream.cancelled:
                yield _cancelled()
                return
            decoder = SseByteDecoder()
            content = resp.content
            try:
                while chunk := await content.readany():
                    blocks = decoder.feed(chunk)
                    if not blocks:
                        continue
                    events = self._events(stream, blocks)
                    if stream.done:
                        await drain_response(resp)  # the connection goes back to the pool
                    for event in events:
                        yield event
                        if stream.cancelled:
                            yield _cancelled()
                            return
                    if stream.done or stream.failed or stream.fault:
                        break
            except STREAM_ERRORS as exc:
                if stream.cancelled:
                    yield _cancelled()
                    return
                raise self._broke(stream, f"engine stream broke: {type(exc).__name__}") from exc
            if stream.failed:
                return
            if stream.fault is None and stream.finish is None:  # closed without [DONE]
                stream.fault = "the engine closed the stream without [DONE]"
            if stream.fault is not None:
                raise self._broke(stream, stream.fault)
            for event in self._ended(stream):
                yield event
        finally:
            if self._streams.get(request.job_id) is stream:
                del self._streams[request.job_id]
            if stream.opening is not None and not stream.opening.done():
                stream.opening.cancel()
            if stream.response is not None:
                stream.response.close()  # a no-op once read to its end

    async def _open(
        self, stream: _Stream, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> WorkerEvent | None:
        """Send the request; None once the stream is open (``stream.response``), else the
        job's one event (a refusal, or CANCELLED). Raises WorkerUnreachable."""
        session = self._http.session()

        async def post() -> aiohttp.ClientResponse:
            resp: aiohttp.ClientResponse = await post_json(session, url, body, headers)
            return resp

        stream.opening = opening = asyncio.get_running_loop().create_task(
            post(), name=f"openai-{stream.job_id}"
        )
        try:
            resp = await opening
        except asyncio.CancelledError:
            if _was_cancelled(stream):
                return _cancelled()
            raise
        except CONNECT_ERRORS as exc:
            raise WorkerUnreachable(f"cannot reach engine: {type(exc).__name__}") from exc
        except STREAM_ERRORS as exc:
            raise WorkerUnreachable(f"engine stream broke: {type(exc).__name__}") from exc
        stream.response = resp
        if stream.cancelled:
            return _cancelled()
        if resp.status // 100 != 2:
            try:
                raw = await resp.read()
            except STREAM_ERRORS:
                raw = b""
            refusal = self._refusal(resp.status, raw)
            if isinstance(refusal, WorkerUnreachable):
                raise refusal
            return refusal
        return None

    @staticmethod
    def _events(stream: _Stream, blocks: list[tuple[str, bytes]]) -> list[WorkerEvent]:
        """The events of the SSE events one read completed (consecutive tokens batched);
        sets ``stream.done``, ``failed`` or ``fault`` when the stream ends among them."""
        events: list[WorkerEvent] = []
        texts: list[str] = []
        first = stream.tokens
        fast_loads = orjson.loads
        for _name, raw in blocks:
            if raw[:1] != b"{" and raw.strip() == b"[DONE]":
                if stream.finish is None:  # e.g. llama-cpp-python interrupting the request
                    stream.fault = "the engine ended the stream without a finish_reason"
                else:
                    stream.done = True
                break
            try:
                chunk = fast_loads(raw)
            except ValueError:
                try:
                    chunk = loads(raw)
                except ValueError:
                    continue  # not ours to judge: keep reading
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error") is not None:
                if texts:
                    events.append(token_batch(first, texts))
                    texts = []
                message = _engine_message(json.dumps(chunk).encode())
                events.append(WorkerEvent("error", {"code": "WORKER_FAILED", "message": message}))
                stream.failed = True
                return events
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                stream.usage = usage
            choices = chunk.get("choices")
            choice = choices[0] if choices and isinstance(choices[0], dict) else {}
            text = _chunk_text(choice)
            if text:
                if stream.first_token_at is None:
                    stream.first_token_at = time.monotonic()
                texts.append(text)
                stream.tokens += 1
            finish = choice.get("finish_reason")
            if finish:
                stream.finish = str(finish)
        if texts:
            events.append(token_batch(first, texts))
        return events

    @staticmethod
    def _ended(stream: _Stream) -> tuple[WorkerEvent, WorkerEvent]:
        """The engine finished: ``metrics`` then ``end`` (with the engine's usage)."""
        elapsed = time.monotonic() - stream.t0
        usage, finish, first = stream.usage, stream.finish, stream.first_token_at
        tokens = stream.tokens
        if usage is not None and isinstance(usage.get("completion_tokens"), int):
            tokens = usage["completion_tokens"]
        metrics: dict[str, Any] = {
            "tokens": tokens,
            "elapsed_ms": round(elapsed * 1000, 3),
            "ttft_ms": None if first is None else round((first - stream.t0) * 1000, 3),
            "tokens_per_s": round(tokens / elapsed, 3) if elapsed > 0 else None,
        }
        if usage is not None:
            metrics["usage"] = usage
        end: dict[str, Any] = {"tokens": tokens, "finish_reason": normalise_finish_reason(finish)}
        if finish is not None and finish != end["finish_reason"]:
            end["engine_finish_reason"] = finish
        if usage is not None:
            for key in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(key), int):
                    end[key] = usage[key]
        return WorkerEvent("metrics", metrics), WorkerEvent("end", end)

    @staticmethod
    def _broke(stream: _Stream, why: str) -> WorkerUnreachable | WorkerLost:
        """Before the first token a broken stream is a dispatch fault (retried); after it,
        the worker was lost mid-job."""
        return WorkerLost(why) if stream.tokens else WorkerUnreachable(why)

    @staticmethod
    def _refusal(status: int, raw: bytes) -> WorkerEvent | WorkerUnreachable:
        message = _engine_message(raw) or f"engine answered {status}"
        if status in _PERMANENT_STATUSES:
            code = "CONTEXT_TOO_LARGE" if _CONTEXT_WORDS.search(message) else "INVALID_PARAMETER"
            return WorkerEvent("error", {"code": code, "message": f"engine refused: {message}"})
        return WorkerUnreachable(f"engine answered {status}: {message}")

    def _trim_early_cancels(self) -> None:
        now = time.monotonic()
        while self._early_cancels:
            oldest, at = next(iter(self._early_cancels.items()))
            fresh = now - at <= _EARLY_CANCEL_TTL_S
            if fresh and len(self._early_cancels) <= _EARLY_CANCEL_MEMORY:
                break
            del self._early_cancels[oldest]

    def _take_early_cancel(self, job_id: str) -> bool:
        self._trim_early_cancels()
        return self._early_cancels.pop(job_id, None) is not None

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        """Close the job's connection (the engine aborts the request) and end its events with
        ``error CANCELLED``. Idempotent; a job not running yet is cancelled when it starts."""
        stream = self._streams.get(job_id)
        if stream is None:
            self._early_cancels[job_id] = time.monotonic()
            self._trim_early_cancels()
            return
        if stream.cancelled:
            return
        stream.cancelled = True
        opening = stream.opening
        if opening is not None and not opening.done():
            opening.cancel()  # still waiting for the engine's answer: aiohttp closes it
            await asyncio.wait({opening})
        resp = stream.response
        if resp is not None:
            await _close(resp)  # a reader waiting on the stream wakes up at once

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()
