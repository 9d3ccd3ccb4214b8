"""The OpenAI-compatible wire format of the simulated engine (a simulator: made-up tokens).

Requests: :class:`OpenAiCompletionRequest` (``POST /v1/completions``) and
:class:`OpenAiChatRequest` (``POST /v1/chat/completions``), the subset of OpenAI's fields the
simulator understands (plus vLLM's/llama.cpp's ``top_k``, ``repetition_penalty`` and
``repeat_penalty``); other fields are ignored.

Answers: a :class:`CompletionShape` or :class:`ChatShape` builds the JSON objects of one
request — the streamed chunks (``text_completion`` / ``chat.completion.chunk``), the usage
chunk of ``stream_options.include_usage`` (``choices: []``) and the whole non-streamed object
(``text_completion`` / ``chat.completion``) — so both endpoints share one serving path in
:mod:`llorch_pool.sim.engine`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from orchestrator_core.api import ApiModel
from orchestrator_core.jobs import JobParams
from pydantic import BaseModel, ConfigDict, Field, Strict
from starlette.responses import JSONResponse

from llorch_pool.sim.tokens import render_chat

__all__ = [
    "ChatShape",
    "CompletionShape",
    "OpenAiChatRequest",
    "OpenAiCompletionRequest",
    "openai_error",
]

_DEFAULT_MAX_TOKENS = 16
_Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _OpenAiRequest(ApiModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(strict=False, extra="ignore")

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = 0
    repetition_penalty: Annotated[float, Field(ge=0.0)] | None = None
    repeat_penalty: float | None = None
    presence_penalty: _Penalty = 0.0
    frequency_penalty: _Penalty = 0.0
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    stream: Annotated[bool, Strict()] = False
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream_options: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        """``stream_options.include_usage``: send a usage chunk before ``[DONE]``."""
        return bool((self.stream_options or {}).get("include_usage"))

    def stop_list(self) -> list[str]:
        """Stop strings as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_limit(self) -> int:
        """Most tokens to generate (16 when the request names none)."""
        return self.max_tokens or _DEFAULT_MAX_TOKENS

    def job_params(self) -> JobParams:
        """The sampling fields as the core's :class:`~orchestrator_core.jobs.JobParams`
        (the penalties are accepted and ignored: the simulator has no such sampler)."""
        fields = self.model_dump(exclude={"repetition_penalty"})
        fields |= {"stop": self.stop_list(), "max_tokens": self.token_limit()}
        fields["top_k"] = max(0, self.top_k)  # vLLM spells "all" -1
        if self.repetition_penalty is not None:
            fields["repetition_penalty"] = self.repetition_penalty
        return JobParams.from_mapping(fields)

    def prompt_text(self) -> str:
        """The text the engine generates from."""
        raise NotImplementedError


class OpenAiCompletionRequest(_OpenAiRequest):
    """``POST /v1/completions``: ``prompt`` (a string, or a list joined into one) and the
    shared sampling fields (``max_tokens`` defaults to 16)."""

    prompt: str | list[str]

    def prompt_text(self) -> str:
        """The prompt as one string."""
        return self.prompt if isinstance(self.prompt, str) else "".join(self.prompt)


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class OpenAiChatMessage(BaseModel):
    """One message of a chat request; ``content`` may be a string, a list of text parts
    (joined) or ``null``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None

    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class OpenAiChatRequest(_OpenAiRequest):
    """``POST /v1/chat/completions``: ``messages`` (rendered with the simulator's chat
    template, :func:`~llorch_pool.sim.tokens.render_chat`) and the shared sampling fields;
    ``max_completion_tokens`` wins over ``max_tokens``; 16 when neither is given."""

    messages: Annotated[list[OpenAiChatMessage], Field(min_length=1, max_length=4096)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    def token_limit(self) -> int:
        """Most tokens to generate."""
        return self.max_completion_tokens or super().token_limit()

    def prompt_text(self) -> str:
        """The messages rendered with the simulator's chat template."""
        return render_chat((m.role, m.text()) for m in self.messages)


class CompletionShape:
    """The JSON objects of one ``/v1/completions`` answer."""

    kind = "completion"
    prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = None  # as OpenAI: every chunk but the last has "usage": null
        return out

    def opening(self) -> dict[str, Any] | None:
        """The chunk sent before the first token, if any."""
        return None

    def delta(self, text: str) -> dict[str, Any]:
        """The chunk of one piece of text."""
        return self._chunk([{"text": text, "index": 0, "logprobs": None, "finish_reason": None}])

    def final(self, finish: str) -> dict[str, Any]:
        """The chunk that carries the finish reason."""
        return self._chunk([{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
        return self._chunk([]) | {"usage": usage}

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        """The non-streamed answer."""
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }


class ChatShape(CompletionShape):
    """The JSON objects of one ``/v1/chat/completions`` answer: the first chunk's delta is
    ``{"role": "assistant", "content": ""}``, then ``{"content": text}`` deltas, then an
    empty delta with the finish reason."""

    kind = "chat"
    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def _choice(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def opening(self) -> dict[str, Any] | None:
        """The role chunk."""
        return self._chunk([self._choice({"role": "assistant", "content": ""}, None)])

    def delta(self, text: str) -> dict[str, Any]:
        """A content delta."""
        return self._chunk([self._choice({"content": text}, None)])

    def final(self, finish: str) -> dict[str, Any]:
        """An empty delta with the finish reason."""
        return self._chunk([self._choice({}, finish)])

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }


def openai_error(message: str, kind: str, status: int) -> JSONResponse:
    """An OpenAI-style error answer: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)
