"""API request, response and error types shared by the daemon and the CLI.

Requests are pydantic models that validate on construction *and* on :meth:`validate`; both
turn every problem into :class:`~orchestrator_core.errors.RequestInvalid`, one
:class:`~orchestrator_core.errors.FieldError` per bad field with a stable code and a message
that names the field (``temperature: must be between 0 and 2, got 5.0``). The daemon and the
CLI therefore reject bad input with the same code and the same words.

JSON Schemas of every request/response type come from :func:`json_schemas`. The routes that
take and answer them: docs/design/http-api.md.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator_core.errors import ErrorCode, FieldError, RequestInvalid

__all__ = [
    "MAX_STOP_SEQUENCES",
    "SEED_MAX",
    "ApiModel",
    "ErrorBody",
    "ErrorEnvelope",
    "JobError",
    "JobStatusResponse",
    "MaxTokens",
    "Penalty",
    "RepetitionPenalty",
    "Seed",
    "StopSequences",
    "TaskSubmitRequest",
    "TaskSubmitResponse",
    "Temperature",
    "TopK",
    "TopP",
    "WorkerSpawnRequest",
    "WorkerSpawnResponse",
    "field_error",
    "field_errors",
    "json_schemas",
    "request_invalid",
]

SEED_MAX = 2**64 - 1
"""Largest seed: seeds are unsigned 64-bit integers."""

MAX_STOP_SEQUENCES = 4
"""At most this many stop strings per request."""

PriorityName = Literal["interactive", "batch"]
StatusName = Literal["queued", "running", "completed", "failed", "cancelled"]
KindName = Literal["task", "completion", "chat"]

# The sampling fields: one definition of each field's type and limits, used by
# TaskSubmitRequest here and by the worker protocol's ExecuteRequest (llorch_pool.protocol).
# Their defaults are those of orchestrator_core.jobs.JobParams.
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]
"""Most tokens to generate."""
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
"""Sampling temperature (0 = greedy)."""
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
"""Nucleus sampling mass."""
TopK = Annotated[int, Field(ge=0, le=1_000_000)]
"""Sample from the top K tokens (0 = all)."""
RepetitionPenalty = Annotated[float, Field(ge=0.0, le=2.0)]
"""Repetition penalty (1 = none)."""
StopSequences = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=256)]],
    Field(max_length=MAX_STOP_SEQUENCES),
]
"""Stop strings, at most :data:`MAX_STOP_SEQUENCES`."""
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
"""Sampling seed (unsigned 64-bit)."""
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
"""OpenAI's presence or frequency penalty (0 = none)."""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field_error(
    model: type[BaseModel] | None, err: Mapping[str, Any], *, root: str = "body"
) -> FieldError:
    """Turn one pydantic error (an item of ``ValidationError.errors()``) into a
    :class:`FieldError` naming the field path, the rule and the bad value.

    ``model`` is the model that raised it (its JSON Schema gives both bounds of a range);
    without it, the bound the error carries is named. ``root`` names a value with an empty
    path. Most callers want :func:`field_errors` or :func:`request_invalid`.
    """
    loc = _path(err["loc"], root)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = _describe(err.get("input"))
    top = str(err["loc"][0]) if err["loc"] else ""
    lo, hi = _bounds(model, tuple(err["loc"])) if model is not None else (None, None)
    if kind == "missing":
        return FieldError(loc, ErrorCode.INVALID_REQUEST, f"{loc}: is required")
    if kind == "extra_forbidden":
        return FieldError(loc, ErrorCode.INVALID_REQUEST, f"{loc}: unknown field")
    if kind in _COMPARISONS:
        if lo is not None and hi is not None:
            msg = f"{loc}: must be between {lo} and {hi}, got {got}"
        elif lo is not None:
            msg = f"{loc}: must be >= {lo}, got {got}"
        elif hi is not None:
            msg = f"{loc}: must be <= {hi}, got {got}"
        else:
            op, key = _COMPARISONS[kind]
            msg = f"{loc}: must be {op} {ctx.get(key, '?')}, got {got}"
        return FieldError(loc, ErrorCode.INVALID_PARAMETER, msg)
    if kind == "too_long" and top == "stop":
        n = len(err["input"]) if isinstance(err.get("input"), list) else "more"
        msg = f"stop: at most {MAX_STOP_SEQUENCES} stop strings, got {n}"
        return FieldError(loc, ErrorCode.INVALID_PARAMETER, msg)
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        msg = (
            f"{loc}: must not be empty"
            if least == 1
            else f"{loc}: must be at least {least} characters"
        )
        return FieldError(loc, ErrorCode.INVALID_PARAMETER, msg)
    if kind == "string_too_long":
        limit = ctx.get("max_length")
        msg = f"{loc}: must be at most {limit} characters"
        return FieldError(loc, ErrorCode.INVALID_PARAMETER, msg)
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        msg = f"{loc}: must be one of {expected}, got {got}"
        return FieldError(loc, ErrorCode.INVALID_PARAMETER, msg)
    if kind == "string_pattern_mismatch":
        msg = f"{loc}: must match {ctx.get('pattern')}, got {got}"
        return FieldError(loc, ErrorCode.INVALID_PARAMETER, msg)
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "model_type":
        expected = kind.removesuffix("_type").removesuffix("_parsing").replace("_", " ")
        code = ErrorCode.INVALID_REQUEST if kind == "model_type" else ErrorCode.INVALID_PARAMETER
        return FieldError(loc, code, f"{loc}: must be {_article(expected)}, got {got}")
    if kind == "value_error":
        reason = str(ctx.get("error", err["msg"]))
        return FieldError(loc, ErrorCode.INVALID_PARAMETER, f"{loc}: {reason}")
    return FieldError(loc, ErrorCode.INVALID_PARAMETER, f"{loc}: {str(err['msg']).lower()}")


_COMPARISONS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def field_errors(
    errors: ValidationError | Iterable[Mapping[str, Any]],
    model: type[BaseModel] | None = None,
    *,
    skip_loc: Collection[str] = (),
    root: str = "body",
) -> list[FieldError]:
    """Every error of a pydantic validation as a :class:`FieldError` whose message names the
    field (``temperature: must be between 0 and 2, got 5.0``): the one translation of
    pydantic's errors into the project's, shared by the API types, the configurations, the
    pool, the CLI and the daemon.

    ``errors`` is a :class:`pydantic.ValidationError` or its ``errors()`` (FastAPI's
    ``RequestValidationError.errors()`` too); ``model`` is the model validated, for the bounds
    of ranges. ``skip_loc`` are location parts left out of field paths (FastAPI's ``query``,
    ``header``, ``path``, ``body``); ``root`` names a value with no path left (default
    ``body``).
    """
    items = errors.errors() if isinstance(errors, ValidationError) else errors
    out: list[FieldError] = []
    for item in items:
        err = item
        if skip_loc:
            err = {**item, "loc": tuple(p for p in item["loc"] if p not in skip_loc)}
        out.append(field_error(model, err, root=root))
    return out


def request_invalid(
    errors: ValidationError | Iterable[Mapping[str, Any]],
    model: type[BaseModel] | None = None,
    *,
    skip_loc: Collection[str] = (),
    root: str = "body",
) -> RequestInvalid:
    """:class:`RequestInvalid` listing :func:`field_errors` (same arguments): what a
    request that failed pydantic's validation is answered with."""
    return RequestInvalid(field_errors(errors, model, skip_loc=skip_loc, root=root))


def _path(loc: Iterable[int | str], root: str = "body") -> str:
    """``("auth", "clients", 0, "token")`` -> ``"auth.clients[0].token"``; ``root`` if empty."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or root


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _bounds(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[Any, Any]:
    """(lower, upper) bounds of the numeric field at ``loc``, read from the JSON Schema."""
    schema = _schema(model)
    defs = schema.get("$defs", {})

    def deref(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return defs.get(ref.rsplit("/", 1)[-1], {}) if isinstance(ref, str) else node

    def options(node: dict[str, Any]) -> list[dict[str, Any]]:
        node = deref(node)
        return [node, *(deref(o) for o in node.get("anyOf", []))]

    nodes = [schema]
    for part in loc:
        nxt: list[dict[str, Any]] = []
        for node in (o for n in nodes for o in options(n)):
            if isinstance(part, int) and "items" in node:
                nxt.append(node["items"])
            elif isinstance(part, str) and part in node.get("properties", {}):
                nxt.append(node["properties"][part])
            elif isinstance(part, str) and isinstance(node.get("additionalProperties"), dict):
                nxt.append(node["additionalProperties"])
        nodes = nxt
    for option in (o for n in nodes for o in options(n)):
        lo = option.get("minimum", option.get("exclusiveMinimum"))
        hi = option.get("maximum", option.get("exclusiveMaximum"))
        if lo is not None or hi is not None:
            return lo, hi
    return None, None


def _article(noun: str) -> str:
    names = {
        "int": "an integer",
        "float": "a number",
        "string": "a string",
        "bool": "a boolean",
        "list": "a list",
        "dict": "an object",
        "model": "a JSON object",
    }
    return names.get(noun, f"a valid {noun}")


class ApiModel(BaseModel):
    """Base of the API types: strict types, unknown fields refused, errors as RequestInvalid.

    Construction and :meth:`parse` raise :class:`RequestInvalid` (never pydantic's own
    error), so callers of the library see one error type with stable codes; pydantic's
    ``model_validate`` keeps raising ``ValidationError`` (:func:`request_invalid` turns it
    into the same). An ApiModel inside another is validated with it, its errors named by
    their full path (``messages[0].role``).
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise request_invalid(exc, type(self)) from None

    # Validating a model that holds ApiModels (a list of messages, an error body) must not
    # call this __init__ for each of them: its RequestInvalid would escape the outer
    # validation with paths relative to the inner model (``role`` for ``messages[0].role``)
    # and only the first inner model's errors. Marked as pydantic marks BaseModel.__init__,
    # nested models are validated by the outer validator; direct construction still gets
    # RequestInvalid.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def parse(cls, data: Mapping[str, Any] | str | bytes) -> Self:
        """Validate a decoded JSON object, or JSON text, into this type.

        Raises :class:`RequestInvalid` with ``INVALID_REQUEST`` for malformed JSON or a body
        that is not an object, and one field error per bad field otherwise.
        """
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestInvalid(
                    [FieldError("body", ErrorCode.INVALID_REQUEST, f"body: malformed JSON ({exc})")]
                ) from None
            except RecursionError:  # e.g. 5,000 nested arrays: far under any size limit
                raise RequestInvalid(
                    [FieldError("body", ErrorCode.INVALID_REQUEST, "body: JSON nested too deeply")]
                ) from None
        if not isinstance(data, Mapping):
            raise RequestInvalid(
                [FieldError("body", ErrorCode.INVALID_REQUEST, "body: must be a JSON object")]
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise request_invalid(exc, cls) from None
        except RecursionError:  # a decoded object nested too deeply for the validator
            raise RequestInvalid(
                [FieldError("body", ErrorCode.INVALID_REQUEST, "body: JSON nested too deeply")]
            ) from None

    def validate(self) -> Self:  # type: ignore[override]  # pydantic's deprecated classmethod
        """Validate the current field values again (they may have been assigned since
        construction). Returns ``self``; raises :class:`RequestInvalid` listing every bad field.
        """
        try:
            type(self).model_validate(self.model_dump())
        except ValidationError as exc:
            raise request_invalid(exc, type(self)) from None
        return self


class TaskSubmitRequest(ApiModel):
    """``POST /v2/tasks``: one inference task. ``model``, ``prompt`` and ``max_tokens`` are
    required; everything else has a default."""

    model: Annotated[str, Field(min_length=1, max_length=256, description="Model ref or alias")]
    prompt: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    max_tokens: MaxTokens
    temperature: Temperature = 0.7
    top_p: TopP = 1.0
    top_k: TopK = 0
    repetition_penalty: RepetitionPenalty = 1.0
    stop: StopSequences = Field(default_factory=list)
    seed: Seed | None = None
    priority: PriorityName = "interactive"
    session_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=1800)] | None = Field(
        default=None, description="Per-job timeout; defaults to the server's timeout.default_s"
    )


class TaskSubmitResponse(ApiModel):
    """``202`` reply to a submission: the job is durably queued."""

    job_id: str
    status: Literal["queued"] = "queued"
    queue_position: Annotated[int, Field(ge=0, description="Jobs ahead of this one (0 = next)")]
    events_url: str


class JobError(ApiModel):
    """Why a job failed or was cancelled."""

    code: str
    message: str


class JobStatusResponse(ApiModel):
    """``GET /v2/tasks/{id}``: the state of one job. The prompt itself is never returned.

    ``kind`` is the API that submitted the job (:class:`~orchestrator_core.jobs.JobKind`):
    ``task`` (``POST /v2/tasks``, the default), ``completion`` (``POST /v1/completions``) or
    ``chat`` (``POST /v1/chat/completions``)."""

    job_id: str
    status: StatusName
    kind: KindName = "task"
    model: str
    priority: PriorityName
    session_id: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queue_position: int | None = None
    attempts: int = 0
    pool_id: str | None = None
    worker_id: str | None = None
    tokens_generated: int = 0
    prompt_hash: str
    error: JobError | None = None
    explanation: dict[str, Any] | None = Field(
        default=None, description="The scheduler's last explanation for this job"
    )

    _terminal: ClassVar[frozenset[str]] = frozenset({"completed", "failed", "cancelled"})

    @property
    def is_terminal(self) -> bool:
        """True once the job is completed, failed or cancelled."""
        return self.status in self._terminal


class WorkerSpawnRequest(ApiModel):
    """Ask a pool to start a worker serving ``model_ref`` on ``gpu_id``."""

    model_ref: Annotated[str, Field(min_length=1, max_length=256)]
    pool_id: Annotated[str, Field(min_length=1, max_length=128)]
    gpu_id: Annotated[str, Field(min_length=1, max_length=128)]


class WorkerSpawnResponse(ApiModel):
    """A pool's answer to a worker start: the new worker's id."""

    worker_id: str


class ErrorBody(ApiModel):
    """The ``error`` member of the error envelope."""

    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    correlation_id: str | None = None


class ErrorEnvelope(ApiModel):
    """Every API error: ``{"error": {"code", "message", "details", "correlation_id"}}``."""

    error: ErrorBody


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every request/response type, keyed by type name."""
    types: list[type[BaseModel]] = [
        TaskSubmitRequest,
        TaskSubmitResponse,
        JobStatusResponse,
        JobError,
        WorkerSpawnRequest,
        WorkerSpawnResponse,
        ErrorEnvelope,
    ]
    return {t.__name__: t.model_json_schema() for t in types}
