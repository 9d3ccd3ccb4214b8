"""Scheduling decisions: immutable values, and their plain-dict form shared with Rhai.

A scheduler returns one :data:`Decision`: a single action or a :class:`Batch` of actions
(never a batch inside a batch). The dict form is exactly the Rhai decision map of
docs/design/rhai-policies.md — ``{"action": "dispatch", "job_id": ..., "worker_id": ...}``
— plus two optional keys every action accepts: ``pool_id`` where the Rhai table omits it
(dispatch, evict_worker) and ``explanation``.

Every decision carries an ``explanation``: a short machine-readable dict (which ordering,
filter and score chose it, and the runners-up) that the daemon stores with the job and shows
the operator. It takes no part in equality, so a built-in decision and its Rhai twin compare
equal when they do the same thing.

:func:`decision_from_dict` reads a script's result; anything malformed raises
:class:`DecisionInvalid` naming the field (``actions[1].worker_id: is required``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from orchestrator_core.errors import ErrorCode, OrchestratorError

__all__ = [
    "REJECT_CODES",
    "Action",
    "Batch",
    "Decision",
    "DecisionInvalid",
    "Dispatch",
    "EvictWorker",
    "Reject",
    "StartWorker",
    "Wait",
    "decision_from_dict",
    "decision_to_dict",
    "iter_actions",
]

REJECT_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.NO_CAPACITY,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.MODEL_NOT_FOUND,
        ErrorCode.MODEL_INCOMPATIBLE,
        ErrorCode.INSUFFICIENT_VRAM,
        ErrorCode.CONTEXT_TOO_LARGE,
        ErrorCode.POOL_UNAVAILABLE,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.INVALID_PARAMETER,
        ErrorCode.FORBIDDEN,
        ErrorCode.DEADLINE_EXCEEDED,
        ErrorCode.QUEUE_FULL,
    }
)
"""Codes a scheduler may fail a job with. The others describe transport, auth or internal
failures that a policy cannot truthfully claim (``CANCELLED``, ``WORKER_FAILED``, ...)."""

_MAX_ID = 256
_MAX_TEXT = 1024


class DecisionInvalid(OrchestratorError):
    """A decision (usually a script's result map) is malformed. ``field`` is the dotted path
    of the bad field; the message starts with it."""

    code = ErrorCode.SCHEDULER_ERROR

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}", details={"field": field})


def _no_explanation() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run queued job ``job_id`` on ready worker ``worker_id`` (of pool ``pool_id``; ``None``
    means "the worker's pool", as in the Rhai map which carries no pool)."""

    job_id: str
    worker_id: str
    pool_id: str | None = None
    explanation: Mapping[str, Any] = field(default_factory=_no_explanation, compare=False)
    action: ClassVar[str] = "dispatch"

    def to_dict(self, *, explanation: bool = True) -> dict[str, Any]:
        """The Rhai decision map."""
        out: dict[str, Any] = {"action": self.action, "job_id": self.job_id}
        out["worker_id"] = self.worker_id
        if self.pool_id is not None:
            out["pool_id"] = self.pool_id
        return _with_explanation(out, self.explanation, explanation)


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do now; ``reason`` is a stable snake_case word, ``retry_after_ms`` a hint
    for when the next cycle may change something (the daemon also re-runs on any event)."""

    reason: str = ""
    retry_after_ms: int | None = None
    explanation: Mapping[str, Any] = field(default_factory=_no_explanation, compare=False)
    action: ClassVar[str] = "wait"

    def to_dict(self, *, explanation: bool = True) -> dict[str, Any]:
        """The Rhai decision map."""
        out: dict[str, Any] = {"action": self.action, "reason": self.reason}
        if self.retry_after_ms is not None:
            out["retry_after_ms"] = self.retry_after_ms
        return _with_explanation(out, self.explanation, explanation)


@dataclass(frozen=True, slots=True)
class StartWorker:
    """Ask pool ``pool_id`` to start a worker for ``model_ref`` on GPU ``gpu_id``."""

    pool_id: str
    gpu_id: str
    model_ref: str
    reason: str = ""
    explanation: Mapping[str, Any] = field(default_factory=_no_explanation, compare=False)
    action: ClassVar[str] = "start_worker"

    def to_dict(self, *, explanation: bool = True) -> dict[str, Any]:
        """The Rhai decision map."""
        out: dict[str, Any] = {"action": self.action, "pool_id": self.pool_id}
        out.update(gpu_id=self.gpu_id, model_ref=self.model_ref, reason=self.reason)
        return _with_explanation(out, self.explanation, explanation)


@dataclass(frozen=True, slots=True)
class EvictWorker:
    """Stop idle worker ``worker_id`` (of pool ``pool_id``; ``None`` = the worker's pool)."""

    worker_id: str
    pool_id: str | None = None
    reason: str = ""
    explanation: Mapping[str, Any] = field(default_factory=_no_explanation, compare=False)
    action: ClassVar[str] = "evict_worker"

    def to_dict(self, *, explanation: bool = True) -> dict[str, Any]:
        """The Rhai decision map."""
        out: dict[str, Any] = {"action": self.action, "worker_id": self.worker_id}
        if self.pool_id is not None:
            out["pool_id"] = self.pool_id
        out["reason"] = self.reason
        return _with_explanation(out, self.explanation, explanation)


@dataclass(frozen=True, slots=True)
class Reject:
    """Fail queued job ``job_id`` with a stable error ``code`` (see :data:`REJECT_CODES`)."""

    job_id: str
    code: ErrorCode
    message: str = ""
    explanation: Mapping[str, Any] = field(default_factory=_no_explanation, compare=False)
    action: ClassVar[str] = "reject"

    def __post_init__(self) -> None:
        if not isinstance(self.code, ErrorCode):
            object.__setattr__(self, "code", _error_code(self.code, "code"))

    def to_dict(self, *, explanation: bool = True) -> dict[str, Any]:
        """The Rhai decision map."""
        out: dict[str, Any] = {"action": self.action, "job_id": self.job_id}
        out.update(code=str(self.code), message=self.message)
        return _with_explanation(out, self.explanation, explanation)


Action = Dispatch | Wait | StartWorker | EvictWorker | Reject
"""One action of a decision."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Several actions decided in one cycle, to be executed in order (an eviction before the
    start that needs its VRAM)."""

    actions: tuple[Action, ...]
    explanation: Mapping[str, Any] = field(default_factory=_no_explanation, compare=False)
    action: ClassVar[str] = "batch"

    def __post_init__(self) -> None:
        actions = tuple(self.actions)
        for i, act in enumerate(actions):
            if not isinstance(act, Dispatch | Wait | StartWorker | EvictWorker | Reject):
                raise DecisionInvalid(f"actions[{i}]", f"not an action: {type(act).__name__}")
        object.__setattr__(self, "actions", actions)

    def to_dict(self, *, explanation: bool = True) -> dict[str, Any]:
        """The Rhai decision map: ``{"action": "batch", "actions": [...]}``."""
        out: dict[str, Any] = {
            "action": self.action,
            "actions": [a.to_dict(explanation=explanation) for a in self.actions],
        }
        return _with_explanation(out, self.explanation, explanation)


Decision = Action | Batch
"""What a scheduler returns."""


def iter_actions(decision: Decision) -> tuple[Action, ...]:
    """The actions of ``decision`` in execution order (a single action is a 1-tuple)."""
    return decision.actions if isinstance(decision, Batch) else (decision,)


def decision_to_dict(decision: Decision, *, explanation: bool = True) -> dict[str, Any]:
    """The Rhai decision map of ``decision`` (with its explanation unless told otherwise)."""
    return decision.to_dict(explanation=explanation)


def _with_explanation(
    out: dict[str, Any], value: Mapping[str, Any], include: bool
) -> dict[str, Any]:
    if include and value:
        out["explanation"] = dict(value)
    return out


# -- reading decision maps ---------------------------------------------------------------

_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # action: (required fields, optional fields); "action" and "explanation" always allowed
    "dispatch": (frozenset({"job_id", "worker_id"}), frozenset({"pool_id"})),
    "wait": (frozenset(), frozenset({"reason", "retry_after_ms"})),
    "start_worker": (
        frozenset({"pool_id", "gpu_id", "model_ref"}),
        frozenset({"reason"}),
    ),
    "evict_worker": (frozenset({"worker_id"}), frozenset({"pool_id", "reason"})),
    "reject": (frozenset({"job_id", "code"}), frozenset({"message"})),
    "batch": (frozenset({"actions"}), frozenset()),
}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _id(data: Mapping[str, Any], name: str, path: str) -> str:
    value = data.get(name)
    where = f"{path}{name}"
    if value is None:
        raise DecisionInvalid(where, "is required")
    if not isinstance(value, str):
        raise DecisionInvalid(where, f"must be a string, got {_describe(value)}")
    if not value or len(value) > _MAX_ID:
        raise DecisionInvalid(where, f"must be 1 to {_MAX_ID} characters, got {len(value)}")
    return value


def _opt_id(data: Mapping[str, Any], name: str, path: str) -> str | None:
    return None if data.get(name) is None else _id(data, name, path)


def _text(data: Mapping[str, Any], name: str, path: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DecisionInvalid(f"{path}{name}", f"must be a string, got {_describe(value)}")
    if len(value) > _MAX_TEXT:
        raise DecisionInvalid(f"{path}{name}", f"must be at most {_MAX_TEXT} characters")
    return value


def _error_code(value: Any, where: str) -> ErrorCode:
    if isinstance(value, str):
        try:
            return ErrorCode(value)
        except ValueError:
            pass
    known = ", ".join(sorted(c.value for c in REJECT_CODES))
    raise DecisionInvalid(
        where, f"must be a stable error code (one of {known}), got {_describe(value)}"
    )


def _retry_after(data: Mapping[str, Any], path: str) -> int | None:
    value = data.get("retry_after_ms")
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DecisionInvalid(
            f"{path}retry_after_ms", f"must be an integer >= 0, got {_describe(value)}"
        )
    return value


def _explanation(data: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    value = data.get("explanation")
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise DecisionInvalid(f"{path}explanation", "must be a map with string keys")
    return dict(value)


def _action(data: Any, path: str, *, nested: bool) -> Decision:
    where = path.rstrip(".") or "decision"
    if not isinstance(data, Mapping):
        raise DecisionInvalid(where, f"must be a map, got {_describe(data)}")
    kind = data.get("action")
    if kind is None:
        raise DecisionInvalid(f"{path}action", "is required")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise DecisionInvalid(
            f"{path}action",
            f"must be one of {', '.join(sorted(_FIELDS))}, got {_describe(kind)}",
        )
    required, optional = _FIELDS[kind]
    for key in data:
        if key not in required and key not in optional and key not in ("action", "explanation"):
            raise DecisionInvalid(f"{path}{key}", f"unknown field for action {kind!r}")
    note = _explanation(data, path)
    if kind == "dispatch":
        return Dispatch(
            _id(data, "job_id", path),
            _id(data, "worker_id", path),
            _opt_id(data, "pool_id", path),
            explanation=note,
        )
    if kind == "wait":
        return Wait(_text(data, "reason", path), _retry_after(data, path), explanation=note)
    if kind == "start_worker":
        return StartWorker(
            _id(data, "pool_id", path),
            _id(data, "gpu_id", path),
            _id(data, "model_ref", path),
            _text(data, "reason", path),
            explanation=note,
        )
    if kind == "evict_worker":
        return EvictWorker(
            _id(data, "worker_id", path),
            _opt_id(data, "pool_id", path),
            _text(data, "reason", path),
            explanation=note,
        )
    if kind == "reject":
        if data.get("code") is None:
            raise DecisionInvalid(f"{path}code", "is required")
        return Reject(
            _id(data, "job_id", path),
            _error_code(data["code"], f"{path}code"),
            _text(data, "message", path),
            explanation=note,
        )
    # batch
    if nested:
        raise DecisionInvalid(f"{path}action", "a batch cannot contain a batch")
    items = data.get("actions")
    if items is None:
        raise DecisionInvalid(f"{path}actions", "is required")
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise DecisionInvalid(f"{path}actions", f"must be an array, got {_describe(items)}")
    actions: list[Action] = []
    for i, item in enumerate(items):
        act = _action(item, f"{path}actions[{i}].", nested=True)
        assert not isinstance(act, Batch)
        actions.append(act)
    return Batch(tuple(actions), explanation=note)


def decision_from_dict(data: Any) -> Decision:
    """Read a Rhai decision map (or any plain dict in that vocabulary).

    Raises :class:`DecisionInvalid` naming the first bad field: a missing or unknown
    ``action``, a missing required field, a wrong type, an unknown field, an unknown error
    code, a nested batch.
    """
    return _action(data, "", nested=False)
