"""The wire types of the worker protocol and of the pool-agent API (docs/pool-agent.md).

Worker protocol (what an engine serves, natively or through the simulator)::

    POST {worker}/execute  ExecuteRequest          -> text/event-stream:
         started {job_id, worker_id}
         token   {i, t}                 (i = index of the token event, t = its text)
         metrics {tokens, elapsed_ms, ...}          (may interleave with tokens)
         then exactly one of
         end     {tokens, finish_reason: "length" | "stop",
                  prompt_tokens, completion_tokens}
         error   {code, message}
    POST {worker}/cancel   CancelRequest           -> 202, idempotent; the stream ends with
                                                      error {code: "CANCELLED"}
    GET  {worker}/health                           -> 200 when ready, 503 while loading

``ExecuteRequest`` carries exactly one of ``prompt`` (a completion: the text is the model's
input as it is) and ``messages`` (a chat: ``[{role: "system"|"user"|"assistant", content}]``,
which the *engine* renders with its own chat template, then generates the assistant's
answer); both or neither is a 400. ``presence_penalty`` / ``frequency_penalty`` (-2..2,
default 0) are optional. In ``end``, ``completion_tokens`` equals ``tokens`` (generated
tokens) and ``prompt_tokens`` is the engine's own count of its input (the rendered chat for
``messages``) with its tokenizer. Unknown request fields are ignored.

Pool-agent API (what a pool serves to the orchestrator)::

    POST {pool}/v2/workers/start  WorkerStartRequest -> 202 {worker_id}
    POST {pool}/v2/workers/stop   WorkerStopRequest  -> 202 {worker_id}
    GET  {pool}/v2/inventory                          -> PoolInventory

Requests validate with the core's :class:`~orchestrator_core.api.ApiModel`, so bad input is a
:class:`~orchestrator_core.errors.RequestInvalid` whose message names the field.
"""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from orchestrator_core.api import (
    ApiModel,
    MaxTokens,
    RepetitionPenalty,
    Seed,
    StopSequences,
    Temperature,
    TopK,
    TopP,
)
from orchestrator_core.errors import ErrorCode, FieldError, RequestInvalid
from orchestrator_core.jobs import JobParams
from orchestrator_core.pools import GpuInfo, PoolHeartbeat, PoolStatus, WorkerInfo
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

__all__ = [
    "CORRELATION_HEADER",
    "MAX_CHAT_CHARS",
    "MAX_CHAT_MESSAGES",
    "CancelRequest",
    "ChatMessage",
    "ChatRole",
    "ExecuteRequest",
    "FinishReason",
    "PoolInventory",
    "WorkerProtocol",
    "WorkerStartRequest",
    "WorkerStopRequest",
    "correlation_id_from",
]

CORRELATION_HEADER = "X-Correlation-Id"
"""Header carrying the correlation id between orchestrator, pools and workers."""

_CORRELATION_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")

MAX_CHAT_MESSAGES = 4096
"""Most messages in one chat job."""
MAX_CHAT_CHARS = 1_000_000
"""Most characters in all the messages of one chat job together (as for one prompt)."""

ChatRole = Literal["system", "user", "assistant"]
"""Who wrote a chat message."""

_Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]

FinishReason = Literal["length", "stop"]
"""Why a stream ended normally: ``max_tokens`` reached, or a stop string / end of sequence."""


class WorkerProtocol(StrEnum):
    """Which HTTP protocol a worker speaks. The pool reports it per worker (see
    :class:`PoolInventory`), because a worker's URI alone does not tell."""

    NATIVE = "llorch"
    """The native protocol (docs/pool-agent.md): ``POST /execute`` (SSE) and ``POST /cancel``."""
    OPENAI = "openai"
    """OpenAI-compatible ``POST /v1/completions`` with ``stream: true`` (vLLM, llama.cpp's
    server, SGLang, Ollama). Cancellation = closing the stream."""


def correlation_id_from(value: str | None) -> str:
    """The incoming correlation id if it is valid (``^[A-Za-z0-9-]{1,64}$``), else a new one."""
    if value is not None and _CORRELATION_RE.match(value):
        return value
    return uuid.uuid4().hex


class ChatMessage(BaseModel):
    """One message of a chat job (``ExecuteRequest.messages``). Unknown fields (``name``…)
    are ignored. A plain pydantic model, validated as part of the request, so that errors
    name the whole path (``messages[0].role``)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    role: ChatRole
    content: Annotated[str, Field(max_length=MAX_CHAT_CHARS)]


class ExecuteRequest(ApiModel):
    """``POST {worker}/execute``: run one job. Unknown extra fields are ignored (a newer
    orchestrator may send more), every known field is validated. The sampling fields have
    the types and limits of the core's :class:`~orchestrator_core.api.TaskSubmitRequest` and
    the defaults of :class:`~orchestrator_core.jobs.JobParams`.

    Exactly one of ``prompt`` (non-empty) and ``messages`` is given: with ``messages`` the
    job is a chat, which the engine renders with its own chat template (``prompt`` is then
    absent, ``null`` or ``""``). ``presence_penalty`` and ``frequency_penalty`` are
    OpenAI's (-2..2, 0 = off); an engine that has no such sampler ignores them.
    """

    model_config = ConfigDict(strict=True, extra="ignore")

    job_id: Annotated[str, Field(min_length=1, max_length=128)]
    prompt: Annotated[str, Field(max_length=1_000_000)] | None = None
    messages: (
        Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_CHAT_MESSAGES)] | None
    ) = None
    max_tokens: MaxTokens
    temperature: Annotated[Temperature, Strict(False)] = 0.7
    top_p: Annotated[TopP, Strict(False)] = 1.0
    top_k: TopK = 0
    repetition_penalty: Annotated[RepetitionPenalty, Strict(False)] = 1.0
    stop: StopSequences = Field(default_factory=list)
    seed: Seed | None = None
    presence_penalty: Annotated[_Penalty, Strict(False)] = 0.0
    frequency_penalty: Annotated[_Penalty, Strict(False)] = 0.0

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> ExecuteRequest:
        # RequestInvalid is no ValueError: it leaves pydantic as it is, naming the fields.
        if self.messages is not None and self.prompt:
            message = "messages: not allowed together with a prompt (give one of them)"
            raise RequestInvalid([FieldError("messages", ErrorCode.INVALID_REQUEST, message)])
        if self.messages is None and not self.prompt:
            message = "prompt: is required (or messages, for a chat job)"
            raise RequestInvalid([FieldError("prompt", ErrorCode.INVALID_REQUEST, message)])
        if self.messages is not None and sum(len(m.content) for m in self.messages) > (
            MAX_CHAT_CHARS
        ):
            message = f"messages: at most {MAX_CHAT_CHARS} characters of content in all"
            raise RequestInvalid([FieldError("messages", ErrorCode.INVALID_PARAMETER, message)])
        return self

    @property
    def is_chat(self) -> bool:
        """True for a chat job (``messages`` given)."""
        return self.messages is not None

    def job_params(self) -> JobParams:
        """The sampling fields as the core's :class:`~orchestrator_core.jobs.JobParams`."""
        return JobParams.from_mapping(self.model_dump())


class CancelRequest(ApiModel):
    """``POST {worker}/cancel``: cancel a job. Idempotent, unknown jobs included."""

    model_config = ConfigDict(strict=True, extra="ignore")

    job_id: Annotated[str, Field(min_length=1, max_length=128)]


class WorkerStartRequest(ApiModel):
    """``POST {pool}/v2/workers/start``: start a worker for ``model_ref`` on ``gpu_id``.

    ``pool_id`` is optional so that the orchestrator may send a core
    :class:`~orchestrator_core.api.WorkerSpawnRequest` as it is; when present it must name
    this pool.
    """

    model_ref: Annotated[str, Field(min_length=1, max_length=256)]
    gpu_id: Annotated[str, Field(min_length=1, max_length=128)]
    pool_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class WorkerStopRequest(ApiModel):
    """``POST {pool}/v2/workers/stop``: stop (and forget) a worker. Idempotent for a worker
    that this pool stopped before."""

    worker_id: Annotated[str, Field(min_length=1, max_length=128)]


class PoolInventory(ApiModel):
    """``GET {pool}/v2/inventory``: the heartbeat's content plus what the heartbeat cannot
    carry yet.

    ``protocols`` maps every worker id in ``workers`` to its :class:`WorkerProtocol` value
    (``"llorch"`` or ``"openai"``). Core's strict :class:`WorkerInfo` has no such field; until
    it gets one, the orchestrator reads it here (see docs/pool-agent.md).
    """

    pool_id: str
    endpoint: str
    sent_at: float
    gpus: list[GpuInfo] = Field(default_factory=list)
    workers: list[WorkerInfo] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    model_vram_bytes: dict[str, int] = Field(default_factory=dict)
    reported_status: Annotated[PoolStatus, Strict(False)] | None = None
    protocols: dict[str, str] = Field(default_factory=dict)

    def heartbeat(self) -> PoolHeartbeat:
        """The :class:`PoolHeartbeat` with the same content (what the agent sends)."""
        return PoolHeartbeat(
            sent_at=self.sent_at,
            gpus=list(self.gpus),
            workers=list(self.workers),
            models=list(self.models),
            model_vram_bytes=dict(self.model_vram_bytes),
            reported_status=self.reported_status,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return self.model_dump(mode="json")
