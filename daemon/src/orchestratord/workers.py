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

import httpx
from orchestrator_core.jobs import JobParams
from orchestrator_core.sse import SseDecoder

__all__ = [
    "ExecuteRequest",
    "NativeWorkerClient",
    "ProtocolRoutingWorkerClient",
    "WorkerClient",
    "WorkerError",
    "WorkerEvent",
    "WorkerLost",
    "WorkerUnreachable",
    "drain_response",
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
    """One event of a worker's stream: ``kind`` is started|token|metrics|end|error."""

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


async def drain_response(lines: AsyncIterator[str], limit_s: float = _DRAIN_S) -> None:
    """Read what is left of a streamed response after its last event (at most ``limit_s``).

    httpx returns a connection to its keep-alive pool only when the response was read to the
    end; one closed half-read costs a new TCP connection for the next job (and a socket in
    TIME_WAIT)."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(limit_s):
            async for _ in lines:
                pass


class NativeWorkerClient:
    """:class:`WorkerClient` for the native worker protocol, over one pooled httpx client.

    ``connect_timeout_s`` bounds reaching the worker; ``read_timeout_s`` bounds the silence
    between two events (a worker that stops talking is treated as lost).
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=30, pool=30)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        self._client = client or httpx.AsyncClient(timeout=timeout, limits=limits)

    async def execute(
        self, worker_uri: str, request: ExecuteRequest, *, correlation_id: str
    ) -> AsyncIterator[WorkerEvent]:
        """See :class:`WorkerClient`."""
        url = worker_uri.rstrip("/") + "/execute"
        headers = {"X-Correlation-Id": correlation_id, "Accept": "text/event-stream"}
        started = False
        try:
            async with self._client.stream(
                "POST", url, json=request.to_json(), headers=headers
            ) as resp:
                if resp.status_code // 100 != 2:
                    await resp.aread()
                    raise WorkerUnreachable(f"worker answered {resp.status_code} to /execute")
                decoder = SseDecoder()
                lines = resp.aiter_lines()
                async for line in lines:
                    parsed = decoder.feed(line)
                    if parsed is None:
                        continue
                    kind, raw = parsed.event, parsed.data
                    try:
                        data = json.loads(raw) if raw else {}
                    except ValueError:
                        data = {"raw": raw}
                    if not isinstance(data, dict):
                        data = {"value": data}
                    started = True
                    if kind in _TERMINAL:
                        await drain_response(lines)  # the connection goes back to the pool
                        yield WorkerEvent(kind, data)
                        return
                    yield WorkerEvent(kind, data)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise WorkerUnreachable(f"cannot reach worker: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            if not started:
                raise WorkerUnreachable(f"worker failed before starting: {exc!r}") from exc
            raise WorkerLost(f"worker stream broke: {type(exc).__name__}") from exc
        raise WorkerLost("worker stream ended without end or error")

    async def cancel(self, worker_uri: str, job_id: str, *, correlation_id: str) -> None:
        """See :class:`WorkerClient`."""
        url = worker_uri.rstrip("/") + "/cancel"
        try:
            resp = await self._client.post(
                url, json={"job_id": job_id}, headers={"X-Correlation-Id": correlation_id}
            )
        except httpx.HTTPError as exc:
            raise WorkerUnreachable(f"cannot reach worker to cancel: {exc!r}") from exc
        if resp.status_code // 100 != 2:
            raise WorkerUnreachable(f"worker answered {resp.status_code} to /cancel")

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()


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
