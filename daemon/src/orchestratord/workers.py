"""Talking to workers: the :class:`WorkerClient` protocol and the native worker client.

The native worker protocol (docs/design/http-api.md, *Calls the daemon makes*)::

    POST {worker}/execute  {job_id, prompt | messages, max_tokens, temperature, top_p,
                            top_k, repetition_penalty, presence_penalty,
                            frequency_penalty, stop, seed}
         -> text/event-stream: started {job_id, worker_id}
                               token   {i, t}
                               metrics {...}               (may interleave with tokens)
                               end     {tokens, finish_reason, prompt_tokens?,
                                        completion_tokens?} | error {code, message}

A chat job sends ``messages`` (``[{role, content}]``) instead of ``prompt``: the engine
applies its own chat template (the chat extension of the native protocol).
    POST {worker}/cancel   {job_id} -> 202 (idempotent)

A client yields the stream's events as :class:`WorkerEvent` values of the same kinds, plus
one kind that exists only inside the daemon, never on the wire: ``tokens {i, t: [text, …]}``,
two or more consecutive tokens that arrived in one read from the socket (``i`` is the index of
the first). A client yields it instead of as many ``token`` events, so a fast engine costs
the daemon one event per read rather than one per token; it never reorders: a ``metrics``,
``end`` or ``error`` between two tokens splits the batch. A lone token stays ``token {i, t}``.

A client yields :class:`WorkerEvent` values and raises one of two errors, which the daemon's
retry rules tell apart:

* :class:`WorkerUnreachable` — the job never reached the worker (connection refused, a non-2xx
  answer to ``/execute``): a transient fault, retried before the first token (DISPATCH_FAILED
  when attempts run out);
* :class:`WorkerLost` — the stream broke after it had started (the worker died mid-job):
  retried only if no token was relayed, else the job fails with WORKER_FAILED.

Engines that speak the OpenAI-compatible API (``/v1/completions`` with ``stream: true``:
vLLM, llama.cpp's server, SGLang, Ollama) are driven by
:class:`~orchestratord.openai_workers.OpenAIWorkerClient` behind the same protocol.
:class:`ProtocolRoutingWorkerClient` picks the client of each job from the worker's
``protocol`` (``WorkerInfo.protocol``, carried in :attr:`ExecuteRequest.protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp
import orjson
from aiohttp import connector as _aiohttp_connector
from orchestrator_core.jobs import JobParams
from orchestrator_core.sse import SseByteDecoder

__all__ = [
    "ExecuteRequest",
    "HttpSessions",
    "NativeWorkerClient",
    "ProtocolRoutingWorkerClient",
    "WorkerClient",
    "WorkerError",
    "WorkerEvent",
    "WorkerLost",
    "WorkerUnreachable",
    "drain_response",
    "loads",
]


class WorkerError(Exception):
    """Base of the faults a worker client reports."""


class WorkerUnreachable(WorkerError):
    """The job did not reach the worker (connect error, refused, non-2xx)."""


class WorkerLost(WorkerError):
    """The worker's stream broke after it had started (or ended without a terminal event)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecuteRequest(JobParams):
    """What the daemon asks a worker to run (the body of ``POST /execute``): the job's
    sampling parameters (inherited from :class:`~orchestrator_core.JobParams`), its id and
    prompt.

    ``model`` and ``protocol`` describe the worker, not the job's body: the model it serves
    (OpenAI-compatible engines want it as ``model``) and how to talk to it (``"llorch"`` or
    ``"openai"``, from its ``WorkerInfo``). Neither is part of the native body."""

    job_id: str
    prompt: str
    model: str = ""
    protocol: str = "llorch"
    messages: tuple[Mapping[str, str], ...] | None = None
    """A chat job's messages (``prompt`` is then empty): the engine applies its template."""

    @classmethod
    def of(
        cls,
        params: JobParams,
        *,
        job_id: str,
        prompt: str,
        model: str = "",
        protocol: str = "",
        messages: Sequence[Mapping[str, str]] | None = None,
    ) -> ExecuteRequest:
        """The request running a job with ``params`` on a worker."""
        sampling = {**params.to_dict(), "stop": params.stop}
        return cls(
            job_id=job_id,
            prompt=prompt,
            model=model,
            protocol=protocol or "llorch",
            messages=None if messages is None else tuple(messages),
            **sampling,
        )

    @property
    def is_chat(self) -> bool:
        """A chat job (``messages``) rather than a completion of ``prompt``."""
        return self.messages is not None

    def to_json(self) -> dict[str, Any]:
        """The JSON body of the native ``POST /execute``."""
        if self.messages is not None:
            return {"job_id": self.job_id, "messages": list(self.messages), **self.to_dict()}
        return {"job_id": self.job_id, "prompt": self.prompt, **self.to_dict()}


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """One event of a worker's stream: ``kind`` is started|token|tokens|metrics|end|error.

    ``token {i, t}`` is one token; ``tokens {i, t: [text, …]}`` is two or more consecutive
    tokens a client read at once (``i`` = the first one's index), in order — an in-process
    kind only (see the module docstring); a consumer handles it as that many tokens."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class WorkerClient(Protocol):
    """How the daemon runs a job on a worker and cancels it (one implementation per engine
    protocol). ``execute`` yields events until ``end`` or ``error``; see the module docstring
    for the errors it raises."""

    def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        """Start the job and stream its events."""
        ...

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        """Ask the worker to stop ``job_id``. Idempotent; raises :class:`WorkerError` when the
        worker cannot be reached."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


_TERMINAL = {"end", "error"}
_URI_MEMORY = 4096
_DRAIN_S = 1.0
_KEEPALIVE_S = 30.0
_CLEANUP_CLOSED = bool(getattr(_aiohttp_connector, "NEEDS_CLEANUP_CLOSED", False))
"""aiohttp warns when asked to clean up closed TLS transports on a Python that no longer
needs it (3.12.8+, 3.13.1+)."""

CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)
"""What aiohttp raises when a worker cannot be reached at all."""
STREAM_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError)
"""What aiohttp raises when a request or its stream fails (read timeouts included)."""


class HttpSessions:
    """One pooled :class:`aiohttp.ClientSession`, created on first use inside the running
    loop (a session belongs to its loop), keeping connections to each worker alive between
    jobs. ``connect_timeout_s`` bounds reaching a worker, ``read_timeout_s`` the silence
    between two reads of a stream."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float) -> None:
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session (created in the running loop on first use, or after :meth:`aclose`)."""
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=0,
                keepalive_timeout=_KEEPALIVE_S,
                enable_cleanup_closed=_CLEANUP_CLOSED,
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                # SSE is not worth compressing; skipping it saves both ends the work.
                headers={"Accept-Encoding": "identity"},
                cookie_jar=aiohttp.DummyCookieJar(),  # an engine's cookies are not ours
                raise_for_status=False,
            )
        return session

    async def aclose(self) -> None:
        """Close the session and its pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def loads(raw: bytes) -> Any:
    """JSON ``raw`` decoded by orjson (several times faster than :func:`json.loads` on an
    engine's chunks), by :mod:`json` when orjson refuses it (``NaN``, integers beyond 64
    bits); raises ValueError when neither can."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def post_json(session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]) -> Any:
    """``session.post`` with ``body`` as JSON (encoded once, here); await it for the
    response."""
    headers["Content-Type"] = "application/json"
    return session.post(url, data=orjson.dumps(body, default=_jsonable), headers=headers)


def _jsonable(value: Any) -> Any:
    """What orjson cannot write by itself: a Mapping that is not a dict (e.g. a chat
    message), any other iterable as a list."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)) or hasattr(value, "__iter__"):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


async def drain_response(resp: aiohttp.ClientResponse, limit_s: float = _DRAIN_S) -> None:
    """Read what is left of a streamed response after its last event (at most ``limit_s``).

    aiohttp returns a connection to its keep-alive pool only once the response has been read
    to its end (e.g. the chunked body's last, empty chunk); one closed half-read costs a new
    TCP connection for the next job (and a socket in TIME_WAIT)."""
    content = resp.content
    if content.is_eof():
        return
    with contextlib.suppress(*STREAM_ERRORS):
        async with asyncio.timeout(limit_s):
            while await content.readany():
                pass


def token_batch(first: int, texts: list[str]) -> WorkerEvent:
    """``token {i, t}`` for one text, ``tokens {i, t: [...]}`` for several."""
    if len(texts) == 1:
        return WorkerEvent("token", {"i": first, "t": texts[0]})
    return WorkerEvent("tokens", {"i": first, "t": texts})


def _native_event(kind: str, raw: bytes) -> WorkerEvent:
    try:
        data = loads(raw) if raw else {}
    except ValueError:
        data = {"raw": raw.decode("utf-8", "replace")}
    if not isinstance(data, dict):
        data = {"value": data}
    return WorkerEvent(kind, data)


def native_events(blocks: list[tuple[str, bytes]]) -> tuple[list[WorkerEvent], bool]:
    """The worker events of the SSE events one read completed, consecutive tokens batched;
    and whether a terminal event (``end``/``error``, the last of the list) was among them."""
    events: list[WorkerEvent] = []
    texts: list[str] = []
    first = 0
    for kind, raw in blocks:
        event = _native_event(kind, raw)
        if kind == "token":
            text = event.data.get("t", event.data.get("text"))
            if isinstance(text, str):
                if not texts:
                    index = event.data.get("i")
                    first = index if isinstance(index, int) else 0
                texts.append(text)
                continue
        if texts:
            events.append(token_batch(first, texts))
            texts = []
        events.append(event)
        if kind in _TERMINAL:
            return events, True
    if texts:
        events.append(token_batch(first, texts))
    return events, False


class NativeWorkerClient:
    """:class:`WorkerClient` for the native worker protocol, over one pooled aiohttp session.

    ``connect_timeout_s`` bounds reaching the worker; ``read_timeout_s`` bounds the silence
    between two events (a worker that stops talking is treated as lost). Consecutive tokens
    read at once are yielded as one ``tokens`` event (see the module docstring).
    """

    def __init__(self, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 120.0) -> None:
        self._http = HttpSessions(
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s
        )

    async def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        """See :class:`WorkerClient`."""
        url = worker_uri.rstrip("/") + "/execute"
        headers = {"X-Correlation-Id": correlation_id, "Accept": "text/event-stream"}
        started = False
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await post_json(self._http.session(), url, request.to_json(), headers)
            if resp.status // 100 != 2:
                await resp.read()
                raise WorkerUnreachable(f"worker answered {resp.status} to /execute")
            decoder = SseByteDecoder()
            content = resp.content
            while chunk := await content.readany():
                blocks = decoder.feed(chunk)
                if not blocks:
                    continue
                events, terminal = native_events(blocks)
                started = True
                if terminal:
                    await drain_response(resp)  # the connection goes back to the pool
                for event in events:
                    yield event
                if terminal:
                    return
        except CONNECT_ERRORS as exc:
            raise WorkerUnreachable(f"cannot reach worker: {type(exc).__name__}") from exc
        except STREAM_ERRORS as exc:
            if not started:
                raise WorkerUnreachable(f"worker failed before starting: {exc!r}") from exc
            raise WorkerLost(f"worker stream broke: {type(exc).__name__}") from exc
        finally:
            if resp is not None:
                resp.close()  # a no-op once read to its end (the connection is back in the pool)
        raise WorkerLost("worker stream ended without end or error")

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        """See :class:`WorkerClient`."""
        url = worker_uri.rstrip("/") + "/cancel"
        headers = {"X-Correlation-Id": correlation_id}
        try:
            async with post_json(self._http.session(), url, {"job_id": job_id}, headers) as resp:
                await resp.read()
                status = resp.status
        except STREAM_ERRORS as exc:
            raise WorkerUnreachable(f"cannot reach worker to cancel: {exc!r}") from exc
        if status // 100 != 2:
            raise WorkerUnreachable(f"worker answered {status} to /cancel")

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()


class ProtocolRoutingWorkerClient:
    """:class:`WorkerClient` that sends each job to the client of its worker's protocol
    (:attr:`ExecuteRequest.protocol`): e.g. ``{"llorch": NativeWorkerClient(), "openai":
    OpenAIWorkerClient()}``. An unknown protocol goes to ``default``.

    A cancel goes to the client that runs the job; for a job it does not know (e.g. one
    recovered after a restart) to the client of the protocol last seen at that URI, else to
    ``default``."""

    def __init__(self, clients: Mapping[str, WorkerClient], *, default: str = "llorch") -> None:
        if default not in clients:
            raise ValueError(f"default protocol {default!r} has no client")
        self.clients = dict(clients)
        self.default = default
        self._jobs: dict[str, WorkerClient] = {}
        self._uris: OrderedDict[str, str] = OrderedDict()

    def client_for(self, protocol: str) -> WorkerClient:
        """The client of ``protocol`` (or the default one)."""
        return self.clients.get(protocol) or self.clients[self.default]

    async def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        """See :class:`WorkerClient`."""
        client = self.client_for(request.protocol)
        self._uris[worker_uri] = request.protocol
        self._uris.move_to_end(worker_uri)
        while len(self._uris) > _URI_MEMORY:
            self._uris.popitem(last=False)
        self._jobs[request.job_id] = client
        try:
            async for event in client.execute(worker_uri, request, correlation_id=correlation_id):
                yield event
        finally:
            if self._jobs.get(request.job_id) is client:
                del self._jobs[request.job_id]

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        """See :class:`WorkerClient`."""
        client = self._jobs.get(job_id) or self.client_for(self._uris.get(worker_uri, self.default))
        await client.cancel(worker_uri, job_id, correlation_id=correlation_id)

    async def aclose(self) -> None:
        """Close every client."""
        for client in self.clients.values():
            await client.aclose()
