"""OpenAI-compatible API types: ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models`` and OpenAI's error shape.

Requests are :class:`~orchestrator_core.api.ApiModel` types like ``TaskSubmitRequest``:
:meth:`~orchestrator_core.api.ApiModel.parse` turns malformed JSON and every bad field into
:class:`~orchestrator_core.errors.RequestInvalid`, one field error per field, each message
naming the field (``temperature: must be between 0.0 and 2.0, got 3.0``). The sampling fields
share their types and limits with ``/v2/tasks`` (:mod:`orchestrator_core.api`).

**Nothing is silently ignored.** A field we cannot honour is refused with a 400 naming it
(``logprobs: not supported (no log probabilities)``, ``n: only n=1 is supported (one choice
per request), got 2``), and so is any field OpenAI's API does not have (``<name>: not
supported``). A value that asks for nothing is accepted for every such field: ``null``
(OpenAI's clients send it for "unset"), ``[]`` and ``{}``; and, for the fields OpenAI
defines, their "off" value: ``n``/``best_of`` 1, ``echo``/``logprobs``/``store`` false,
``top_logprobs`` 0, ``suffix`` "", ``tool_choice``/``function_call`` "none",
``response_format`` ``{"type": "text"}``, ``modalities`` ``["text"]``, ``service_tier``
"auto"/"default", ``parallel_tool_calls`` true or false (no tools are ever called), and
``stream_options.include_obfuscation`` false. Every supported field takes ``null`` as
"default".

Where OpenAI's behaviour is ours to choose:

* ``temperature`` defaults to 1.0 and ``top_p`` to 1.0 (OpenAI's defaults; ``/v2/tasks``
  defaults to 0.7); ``max_tokens`` of a completion defaults to 16 (OpenAI's default),
  of a chat to :data:`CHAT_DEFAULT_MAX_TOKENS` (OpenAI has none); for a chat,
  ``max_completion_tokens`` wins over ``max_tokens``.
* ``prompt`` is one non-empty string: arrays of prompts or of token ids are refused.
* ``seed`` is 0 to 2**64-1, as on ``/v2/tasks`` (OpenAI takes any integer).
* Extensions: ``priority`` (``"interactive"`` | ``"batch"``, which the ``openai`` SDK sends
  through ``extra_body``), and ``top_k`` and ``repetition_penalty`` (as vLLM spells them).
* Chat roles are ``system``, ``user``, ``assistant`` and ``developer``; a ``developer``
  message is a ``system`` message (newer OpenAI models renamed it). ``tool`` and
  ``function`` messages are refused (no tool calling). ``content`` is a string or a list of
  ``{"type": "text", "text": ...}`` parts, which are joined with ``"\\n"`` (as vLLM does);
  other parts (``image_url``, ``input_audio``, ``file``, ``refusal``) are refused. A
  message's ``name`` is kept.

Responses are plain dicts ready for JSON, in OpenAI's wire format (the ``openai`` SDK's
``Completion``, ``ChatCompletion``, ``ChatCompletionChunk`` and ``Model`` types parse them):
see :class:`ResponseBuilder`, :func:`model_object`, :func:`model_list` and
:func:`openai_error`. The library reads no clock: callers pass ``created``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator_core.api import (
    ApiModel,
    MaxTokens,
    Penalty,
    RepetitionPenalty,
    Seed,
    StopSequences,
    Temperature,
    TopK,
    TopP,
)
from orchestrator_core.errors import OrchestratorError, RequestInvalid, http_status_for
from orchestrator_core.jobs import JobKind, JobParams, Priority

__all__ = [
    "CHAT_DEFAULT_MAX_TOKENS",
    "COMPLETION_DEFAULT_MAX_TOKENS",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "OpenAIRequest",
    "ResponseBuilder",
    "StreamOptions",
    "TextPart",
    "messages_from_json",
    "model_list",
    "model_object",
    "openai_error",
    "openai_error_type",
    "usage",
    "user_session_id",
]

COMPLETION_DEFAULT_MAX_TOKENS = 16
"""``max_tokens`` of a completion that sets none: OpenAI's documented default."""

CHAT_DEFAULT_MAX_TOKENS = 256
"""``max_tokens`` of a chat completion that sets neither ``max_completion_tokens`` nor
``max_tokens`` (OpenAI documents no default; this is the daemon's)."""

ChatRole = Literal["system", "user", "assistant", "developer"]
FinishReason = Literal["stop", "length"]

_ROLES = ("system", "user", "assistant", "developer")
_SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# -- validators -----------------------------------------------------------------------------


def _got(value: Any) -> str:
    """The bad value as the other messages of :mod:`orchestrator_core.api` show it."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(value: Any, neutral: Any) -> bool:
    """``value == neutral`` with the same JSON type (``0 == False`` in Python, not in JSON)."""
    return type(value) is type(neutral) and bool(value == neutral)


def _refuse(reason: str, *neutral: Any) -> Callable[[Any], None]:
    """A before-validator for a field we cannot honour: ``null`` and the ``neutral`` values
    (which ask for nothing) pass as ``None``; anything else fails with ``reason`` (which may
    name the value as ``{got}``)."""

    def check(value: Any) -> None:
        if value is None or any(_same(value, n) for n in neutral):
            return
        raise ValueError(reason.format(got=_got(value)))

    return check


def _null_is(default: Any) -> BeforeValidator:
    """``null`` means "the default": OpenAI's clients send it for an unset field."""
    return BeforeValidator(lambda value: default if value is None else value)


def _not_supported(value: Any) -> None:
    """A field OpenAI's API does not have here: only a value that asks for nothing passes."""
    if value is None or _same(value, []) or _same(value, {}):
        return
    raise ValueError("not supported")


def _stop_list(value: Any) -> Any:
    """``stop`` is a string, a list of strings or null; always a list afterwards."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


def _one_prompt(value: Any) -> Any:
    if isinstance(value, list | tuple):
        raise ValueError("arrays of prompts are not supported; send one string")
    return value


_TOOLS = "not supported (no tool calling)"
_LOGPROBS = "not supported (no log probabilities)"
_ONE_CHOICE = "only n=1 is supported (one choice per request), got {got}"
_TEXT_FORMAT = 'only {{"type": "text"}} is supported, got {got}'

_Unsupported = Annotated[None, BeforeValidator(_not_supported)]
_N = Annotated[None, BeforeValidator(_refuse(_ONE_CHOICE, 1))]
_Tools = Annotated[None, BeforeValidator(_refuse(_TOOLS, []))]
_LogitBias = Annotated[None, BeforeValidator(_refuse("not supported", {}))]


# -- requests -------------------------------------------------------------------------------


class StreamOptions(ApiModel):
    """``stream_options``: only with ``stream: true``. ``include_usage`` adds a last chunk
    with ``choices: []`` and the token usage (see :meth:`ResponseBuilder.usage_chunk`)."""

    model_config = ConfigDict(strict=True, extra="allow")
    __pydantic_extra__: dict[str, _Unsupported]

    include_usage: Annotated[bool, _null_is(False)] = False
    include_obfuscation: Annotated[
        None, BeforeValidator(_refuse("not supported (no obfuscation padding)", False))
    ] = None


class OpenAIRequest(ApiModel):
    """The fields :class:`CompletionRequest` and :class:`ChatCompletionRequest` share, and
    what the daemon reads off either: :meth:`job_params`, :meth:`input_text`,
    :meth:`priority_or`, :meth:`session_id_or`."""

    model_config = ConfigDict(strict=True, extra="allow")
    # Fields OpenAI's API does not have (or we do not know): refused unless null, [] or {}.
    __pydantic_extra__: dict[str, _Unsupported]

    kind: ClassVar[JobKind]
    """The kind of the jobs this request makes."""
    default_max_tokens: ClassVar[int]
    """``max_tokens`` when the request sets none."""

    model: Annotated[str, Field(min_length=1, max_length=256, description="Model ref or alias")]
    temperature: Annotated[Temperature, _null_is(1.0)] = 1.0
    top_p: Annotated[TopP, _null_is(1.0)] = 1.0
    stop: Annotated[StopSequences, BeforeValidator(_stop_list)] = Field(
        default_factory=list, description="A string or up to 4 strings"
    )
    seed: Seed | None = None
    presence_penalty: Annotated[Penalty, _null_is(0.0)] = 0.0
    frequency_penalty: Annotated[Penalty, _null_is(0.0)] = 0.0
    user: Annotated[str, Field(max_length=256)] | None = None
    stream: Annotated[bool, _null_is(False)] = False
    stream_options: StreamOptions | None = None
    priority: Literal["interactive", "batch"] | None = Field(
        default=None, description="Extension: the job's priority (the server's default if unset)"
    )
    top_k: Annotated[TopK, _null_is(0)] = Field(default=0, description="Extension (vLLM)")
    repetition_penalty: Annotated[RepetitionPenalty, _null_is(1.0)] = Field(
        default=1.0, description="Extension (vLLM)"
    )
    n: _N = None
    logit_bias: _LogitBias = None
    tools: _Tools = None
    functions: _Tools = None

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> Any:
        # (a "stream" that failed its own validation is absent here: named once, as itself)
        if value is not None and "stream" in info.data and info.data["stream"] is not True:
            raise ValueError("only allowed when stream is true")
        return value

    def requested_max_tokens(self) -> int | None:
        """The ``max_tokens`` the request sets, if any."""
        raise NotImplementedError

    def max_tokens_or(self, default: int | None = None) -> int:
        """Most tokens to generate: the request's, else ``default``, else the class's
        default (:data:`COMPLETION_DEFAULT_MAX_TOKENS`, :data:`CHAT_DEFAULT_MAX_TOKENS`)."""
        requested = self.requested_max_tokens()
        if requested is not None:
            return requested
        return self.default_max_tokens if default is None else default

    def job_params(self, *, default_max_tokens: int | None = None) -> JobParams:
        """The sampling parameters the job runs with; ``default_max_tokens`` as in
        :meth:`max_tokens_or`."""
        return JobParams(
            max_tokens=self.max_tokens_or(default_max_tokens),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=tuple(self.stop),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    def input_text(self) -> str:
        """The text whose size estimates the prompt's tokens (context check, usage)."""
        raise NotImplementedError

    def prompt_text(self) -> str:
        """What the job stores as its prompt: the prompt, or a chat's
        :meth:`ChatCompletionRequest.messages_json`."""
        raise NotImplementedError

    def priority_or(self, default: Priority | str) -> Priority:
        """The body's ``priority`` if set, else ``default`` (e.g. the ``X-Priority`` header or
        the server's default)."""
        return Priority(self.priority if self.priority is not None else default)

    def session_id_or(self, header: str | None) -> str | None:
        """The session: ``header`` (``X-Session-Id``) if given, else one derived from
        ``user`` (:func:`user_session_id`), else ``None``."""
        if header:
            return header
        return user_session_id(self.user) if self.user else None

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(OpenAIRequest):
    """``POST /v1/completions``: complete one prompt string. See the module docstring for
    defaults and refusals."""

    kind: ClassVar[JobKind] = JobKind.COMPLETION
    default_max_tokens: ClassVar[int] = COMPLETION_DEFAULT_MAX_TOKENS

    prompt: Annotated[str, Field(min_length=1, max_length=1_000_000), BeforeValidator(_one_prompt)]
    max_tokens: MaxTokens | None = None
    best_of: Annotated[
        None, BeforeValidator(_refuse("only best_of=1 is supported, got {got}", 1))
    ] = None
    logprobs: Annotated[None, BeforeValidator(_refuse(_LOGPROBS))] = None
    echo: Annotated[None, BeforeValidator(_refuse("not supported", False))] = None
    suffix: Annotated[None, BeforeValidator(_refuse("not supported (no insertion)", ""))] = None

    def requested_max_tokens(self) -> int | None:
        """``max_tokens``, else ``None``."""
        return self.max_tokens

    def input_text(self) -> str:
        """The prompt."""
        return self.prompt

    def prompt_text(self) -> str:
        """The prompt."""
        return self.prompt


def _text_part_type(value: Any) -> Any:
    if value != "text" or not isinstance(value, str):
        raise ValueError(f'only "text" parts are supported, got {_got(value)}')
    return value


class TextPart(ApiModel):
    """One part of a message's ``content``: ``{"type": "text", "text": ...}``."""

    model_config = ConfigDict(strict=True, extra="allow")
    __pydantic_extra__: dict[str, _Unsupported]

    type: Annotated[Literal["text"], BeforeValidator(_text_part_type)]
    text: Annotated[str, Field(max_length=1_000_000)]


def _content(value: Any) -> Any:
    """A string is one text part; a part of another type keeps only its ``type``, so that
    the refusal names ``content[j].type`` and nothing else of that part."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if isinstance(value, list):
        return [
            {"type": p.get("type"), "text": ""}
            if isinstance(p, dict) and "type" in p and p["type"] != "text"
            else p
            for p in value
        ]
    raise ValueError(f"must be a string or a list of text parts, got {_got(value)}")


def _role(value: Any) -> Any:
    if value in ("tool", "function"):
        raise ValueError(f"{value} messages are not supported (no tool calling)")
    if not isinstance(value, str) or value not in _ROLES:
        raise ValueError(f"must be one of {', '.join(_ROLES)}, got {_got(value)}")
    return value


class ChatMessage(ApiModel):
    """One chat message. ``content`` is normalised to a list of :class:`TextPart`;
    :meth:`text` joins them. A ``developer`` message counts as ``system``
    (:meth:`normalized`)."""

    model_config = ConfigDict(strict=True, extra="allow")
    # e.g. an assistant message sent back with "refusal": null, "tool_calls": null
    __pydantic_extra__: dict[str, _Unsupported]

    role: Annotated[ChatRole, BeforeValidator(_role)]
    content: Annotated[list[TextPart], BeforeValidator(_content)]
    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _tool_message(cls, data: Any) -> Any:
        # A tool result's tool_call_id would be refused too: the refused role says enough.
        if isinstance(data, dict) and data.get("role") in ("tool", "function"):
            return {k: v for k, v in data.items() if k != "tool_call_id"}
        return data

    def text(self) -> str:
        """The content's text parts joined with ``"\\n"``."""
        return "\n".join(part.text for part in self.content)

    def normalized(self) -> dict[str, str]:
        """``{"role", "content"}`` (and ``"name"`` if set) with ``developer`` as ``system``
        and the content as one string."""
        out: dict[str, str] = {"role": "system" if self.role == "developer" else self.role}
        out["content"] = self.text()
        if self.name is not None:
            out["name"] = self.name
        return out


def _messages(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError("must contain at least one message")
    return value


class ChatCompletionRequest(OpenAIRequest):
    """``POST /v1/chat/completions``: answer a conversation. See the module docstring for
    defaults and refusals. The job stores :meth:`messages_json` as its prompt."""

    kind: ClassVar[JobKind] = JobKind.CHAT
    default_max_tokens: ClassVar[int] = CHAT_DEFAULT_MAX_TOKENS

    messages: Annotated[list[ChatMessage], BeforeValidator(_messages)]
    max_completion_tokens: MaxTokens | None = None
    max_tokens: MaxTokens | None = None
    logprobs: Annotated[None, BeforeValidator(_refuse(_LOGPROBS, False))] = None
    top_logprobs: Annotated[None, BeforeValidator(_refuse(_LOGPROBS, 0))] = None
    tool_choice: Annotated[None, BeforeValidator(_refuse(_TOOLS, "none"))] = None
    function_call: Annotated[None, BeforeValidator(_refuse(_TOOLS, "none"))] = None
    parallel_tool_calls: Annotated[None, BeforeValidator(_refuse(_TOOLS, True, False))] = None
    response_format: Annotated[None, BeforeValidator(_refuse(_TEXT_FORMAT, {"type": "text"}))] = (
        None
    )
    audio: Annotated[None, BeforeValidator(_refuse("not supported (text only)"))] = None
    modalities: Annotated[
        None, BeforeValidator(_refuse('only ["text"] is supported, got {got}', ["text"]))
    ] = None
    prediction: Annotated[None, BeforeValidator(_refuse("not supported"))] = None
    store: Annotated[
        None, BeforeValidator(_refuse("not supported (completions are not stored)", False))
    ] = None
    service_tier: Annotated[
        None,
        BeforeValidator(
            _refuse("not supported; use priority (interactive or batch)", "auto", "default")
        ),
    ] = None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens``, else ``max_tokens``, else ``None``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def normalized_messages(self) -> list[dict[str, str]]:
        """Every message as :meth:`ChatMessage.normalized` gives it."""
        return [m.normalized() for m in self.messages]

    def messages_json(self) -> str:
        """The normalised messages as canonical compact JSON (sorted keys, no spaces, UTF-8
        kept): what a chat job stores as its prompt, so a finished job keeps only its hash.
        :func:`messages_from_json` reads it back."""
        return json.dumps(
            self.normalized_messages(), separators=(",", ":"), sort_keys=True, ensure_ascii=False
        )

    def input_text(self) -> str:
        """Each message as ``role: content``, one per line: about the size of the prompt a
        chat template renders."""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.normalized_messages())

    def prompt_text(self) -> str:
        """:meth:`messages_json`."""
        return self.messages_json()


def messages_from_json(text: str) -> list[dict[str, str]]:
    """A chat job's stored prompt (:meth:`ChatCompletionRequest.messages_json`) as the list
    of ``{"role", "content"[, "name"]}`` it encodes. Raises :class:`ValueError` if ``text``
    is not such a list."""
    data = json.loads(text)
    if not isinstance(data, list) or not all(
        isinstance(m, dict)
        and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str)
        and all(isinstance(v, str) for v in m.values())
        for m in data
    ):
        raise ValueError("not a list of chat messages")
    return data


def user_session_id(user: str) -> str:
    """A session id for an OpenAI ``user``: the string itself when it is a valid session id
    (``[A-Za-z0-9._:-]``, 1-128 characters), else ``user-`` + 32 hex digits of its SHA-256."""
    if _SESSION_ID.match(user):
        return user
    return "user-" + hashlib.sha256(user.encode("utf-8")).hexdigest()[:32]


# -- responses ------------------------------------------------------------------------------


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object: ``{prompt_tokens, completion_tokens, total_tokens}``."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True, slots=True)
class ResponseBuilder:
    """The answers to one ``completion`` or ``chat`` job in OpenAI's wire format.

    ``created`` is the Unix time (seconds) every chunk and response carries; ``model`` the
    name the client asked for. A stream is :meth:`start_chunks`, then one :meth:`chunk` per
    piece of text, then :meth:`final_chunk`, then :meth:`usage_chunk` if the request's
    ``stream_options.include_usage`` (:attr:`OpenAIRequest.include_usage`), then
    ``data: [DONE]``. An error after the stream started is sent as one ``data:`` line holding
    :func:`openai_error` (the ``openai`` SDK raises it as an ``APIError``).
    ``finish_reason`` is ``"length"`` or, for anything else, ``"stop"``.
    """

    kind: JobKind
    job_id: str
    model: str
    created: int

    def __post_init__(self) -> None:
        if self.kind is JobKind.TASK:
            raise ValueError("ResponseBuilder answers completion and chat jobs only")

    @property
    def id(self) -> str:
        """``cmpl-<job id>`` or ``chatcmpl-<job id>``."""
        prefix = "chatcmpl-" if self.kind is JobKind.CHAT else "cmpl-"
        return prefix + self.job_id

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind is JobKind.CHAT else "text_completion"
        return {**self._head(obj), "choices": choices}

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        reason = None if finish_reason is None else _finish(finish_reason)
        if self.kind is JobKind.CHAT:
            delta = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}

    def start_chunks(self) -> list[dict[str, Any]]:
        """What a stream sends before the first text: for a chat, the chunk with
        ``delta: {"role": "assistant", "content": ""}``; nothing for a completion."""
        if self.kind is not JobKind.CHAT:
            return []
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return [self._chunk([choice])]

    def chunk(self, text: str) -> dict[str, Any]:
        """One piece of generated text (``finish_reason: null``)."""
        return self._chunk([self._choice(text, None)])

    def chunk_parts(self) -> tuple[str, str]:
        """``(before, after)``: the compact JSON of :meth:`chunk` (``separators=(",", ":")``,
        ``ensure_ascii=False``) is ``before + json.dumps(text, ensure_ascii=False) + after``
        — for rendering the many chunks of one stream without building a dict for each."""
        marker = "\x00"
        whole = json.dumps(self.chunk(marker), ensure_ascii=False, separators=(",", ":"))
        before, _, after = whole.rpartition(json.dumps(marker))
        return before, after

    def final_chunk(self, finish_reason: str) -> dict[str, Any]:
        """The chunk that ends the choice: no text (a completion's ``text`` is ``""``, a
        chat's ``delta`` is ``{}``) and the ``finish_reason``."""
        return self._chunk([self._choice(None, finish_reason)])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The last chunk with ``stream_options.include_usage``: ``choices: []`` and
        :func:`usage`."""
        return {**self._chunk([]), "usage": usage(prompt_tokens, completion_tokens)}

    def response(
        self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        """The whole non-streamed answer: a ``text_completion`` or a ``chat.completion`` with
        one choice and :func:`usage`."""
        reason = _finish(finish_reason)
        if self.kind is JobKind.CHAT:
            head = self._head("chat.completion")
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
        else:
            head = self._head("text_completion")
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {**head, "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}


def model_object(
    model_id: str,
    *,
    created: int,
    owned_by: str = "llama-orch",
    state: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of ``GET /v1/models`` (and the body of ``GET /v1/models/{id}``):
    ``{"id", "object": "model", "created", "owned_by"}``, plus ``"llorch": {"state", ...}``
    when ``state`` or ``details`` are given (our own field; clients ignore it)."""
    out: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": owned_by,
    }
    if state is not None or details:
        extra = dict(details or {})
        if state is not None:
            extra["state"] = state
        out["llorch"] = extra
    return out


def model_list(models: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``GET /v1/models``: ``{"object": "list", "data": [...]}`` of :func:`model_object`."""
    return {"object": "list", "data": [dict(m) for m in models]}


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status: 400/413 ``invalid_request_error``, 401
    ``authentication_error``, 403 ``permission_error``, 404 ``not_found_error``, 429
    ``rate_limit_error``, 5xx ``server_error``, any other 4xx ``invalid_request_error``."""
    if status >= 500:
        return "server_error"
    return _ERROR_TYPES.get(status, "invalid_request_error")


def openai_error(err: OrchestratorError) -> dict[str, Any]:
    """``err`` in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

    ``code`` is our stable code, ``type`` follows its HTTP status
    (:func:`openai_error_type` of :func:`~orchestrator_core.errors.http_status_for`, the
    status the daemon answers with) and ``param`` is the first bad field of a
    :class:`RequestInvalid` (``None`` for a body-level problem and for other errors)."""
    param: str | None = None
    if isinstance(err, RequestInvalid) and err.errors and err.errors[0].field != "body":
        param = err.errors[0].field
    return {
        "error": {
            "message": err.message,
            "type": openai_error_type(http_status_for(err.code)),
            "param": param,
            "code": str(err.code),
        }
    }
