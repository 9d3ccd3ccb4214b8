"""The wire types of the worker protocol and of the pool-agent API (docs/pool-agent.md).

Worker protocol (what an engine serves, natively or through the simulator)::

    POST {worker}/execute  ExecuteRequest          -> text/event-stream:
         started {job_id, worker_id}
         token   {i, t}                 (i = index of the token event, t = its text)
         metrics {tokens, elapsed_ms, ...}          (may interleave with tokens)
         then exactly one of
         end     {tokens, finish_reason: "length" | "stop"}
         error   {code, message}
    POST {worker}/cancel   CancelRequest           -> 202, idempotent; the stream ends with
                                                      error {code: "CANCELLED"}
    GET  {worker}/health                           -> 200 when ready, 503 while loading

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
from orchestrator_core.jobs import JobParams
from orchestrator_core.pools import GpuInfo, PoolHeartbeat, PoolStatus, WorkerInfo
from pydantic import ConfigDict, Field, Strict

__all__ = [
    "CORRELATION_HEADER",
    "CancelRequest",
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


class ExecuteRequest(ApiModel):
    """``POST {worker}/execute``: run one job. Unknown extra fields are ignored (a newer
    orchestrator may send more), every known field is validated. The sampling fields have
    the types and limits of the core's :class:`~orchestrator_core.api.TaskSubmitRequest` and
    the defaults of :class:`~orchestrator_core.jobs.JobParams`."""

    model_config = ConfigDict(strict=True, extra="ignore")

    job_id: Annotated[str, Field(min_length=1, max_length=128)]
    prompt: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    max_tokens: MaxTokens
    temperature: Annotated[Temperature, Strict(False)] = 0.7
    top_p: Annotated[TopP, Strict(False)] = 1.0
    top_k: TopK = 0
    repetition_penalty: Annotated[RepetitionPenalty, Strict(False)] = 1.0
    stop: StopSequences = Field(default_factory=list)
    seed: Seed | None = None

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
