"""Diagnostics of policies and the error raised for a policy that cannot be used.

Every problem found in a policy — a syntax error, a missing entry point, a YAML rule with an
unknown field, a failure on the sample snapshot — is a :class:`Diagnostic` naming where it
is (script line and column, or a rule's field path such as ``rules[2].when.priority``).
:class:`PolicyInvalid` carries the errors among them; it is a
:class:`~orchestrator_core.errors.ConfigInvalid`, so the daemon reports it like any other
configuration problem (``scheduler.script: policy.rhai:3:9: syntax: ...``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator_core.errors import ConfigInvalid
from orchestrator_core.rhai.engine import RhaiError

__all__ = ["Diagnostic", "PolicyInvalid", "diagnostic_from_error", "hint_for", "script_position"]

Severity = Literal["error", "warning"]

_METHOD_HINT = (
    "helpers that read the cluster are methods on ctx: write"
    " ctx.find_least_loaded_worker(model), not find_least_loaded_worker(ctx, model)"
)
_HINTS = {
    "unbound_this": _METHOD_HINT,
    "forbidden_symbol": "eval and import are disabled in policies",
    "max_operations": (
        "the call exceeded scheduler.max_operations: avoid scanning ctx.queue or every"
        " worker once per job (ctx.free_workers holds the free workers by model)"
    ),
    "timeout": "the call exceeded scheduler.budget_ms; the built-in policy decided instead",
    "max_call_levels": "recursion too deep: write a loop",
    "property_not_found": (
        "maps fail on an unknown field: check the name (docs/policies.md lists the ctx"
        ' fields) or test first with `"field" in map`'
    ),
    "prelude_collision": "prelude helpers cannot be redefined: rename your function",
    "undefined_variable": "variables must be declared with let before use",
}


def hint_for(kind: str, message: str = "", helpers: Sequence[str] = ()) -> str | None:
    """A short advice for an error ``kind`` (``None`` when there is nothing useful to say).
    A ``function_not_found`` naming one of ``helpers`` gets the calling-convention hint."""
    if kind == "function_not_found":
        if any(f"{h} (" in message or f"{h}(" in message for h in helpers):
            return "check the helper's name and arguments (docs/policies.md); " + _METHOD_HINT
        return None
    return _HINTS.get(kind)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem of a policy. ``where`` is the script name, ``"prelude"``, or a YAML path
    such as ``rules[2].when.priority``; ``line``/``column`` are 1-based (``None`` when
    unknown); ``kind`` is a stable word (the engine's error kind, ``missing_entry_point``,
    ``invalid_decision``, ``refused_decision``, ``unknown_field``, ...)."""

    severity: Severity
    kind: str
    message: str
    where: str | None = None
    line: int | None = None
    column: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        place = self.where or ""
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        text = f"{place}: " if place else ""
        text += f"{self.severity}[{self.kind}]: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON output."""
        return {
            "severity": self.severity,
            "kind": self.kind,
            "message": self.message,
            "where": self.where,
            "line": self.line,
            "column": self.column,
            "hint": self.hint,
        }


_FRAME_RE = re.compile(r"^(?P<fn>.*) @ (?P<line>\d+):(?P<col>\d+)(?P<prelude> \(prelude\))?$")


def script_position(
    err: RhaiError,
) -> tuple[str | None, int | None, int | None, str]:
    """``(where, line, column, note)`` of an engine error, pointing into the script: an
    error inside a prelude helper is placed at the script line that called the helper, and
    ``note`` names the helper and its prelude line (empty otherwise)."""
    if err.source != "prelude":
        return err.source, err.line, err.column, ""
    frames = [_FRAME_RE.match(f) for f in err.traceback]
    helper = next((m["fn"] for m in reversed(frames) if m and m["prelude"]), None)
    for m in reversed(frames):
        if m and not m["prelude"]:
            note = f" (inside prelude helper {helper}, prelude line {err.line})" if helper else ""
            return None, int(m["line"]), int(m["col"]), note
    return err.source, err.line, err.column, ""


def diagnostic_from_error(
    err: RhaiError, *, severity: Severity = "error", helpers: Sequence[str] = ()
) -> Diagnostic:
    """The diagnostic of an engine error (with its position in the script and a hint)."""
    where, line, column, note = script_position(err)
    return Diagnostic(
        severity,
        err.kind,
        err.message + note,
        where,
        line,
        column,
        hint_for(err.kind, err.message, helpers),
    )


class PolicyInvalid(ConfigInvalid):
    """A policy (Rhai script or YAML rules) cannot be used; ``diagnostics`` lists every
    problem found, ``problems`` the error lines (prefixed by the configuration key, e.g.
    ``scheduler.script``, when one is given)."""

    def __init__(
        self,
        diagnostics: Sequence[Diagnostic],
        *,
        key: str | None = None,
        source: str | None = None,
    ) -> None:
        self.diagnostics = list(diagnostics)
        errors = [d for d in self.diagnostics if d.severity == "error"] or self.diagnostics
        prefix = f"{key}: " if key else ""
        super().__init__([prefix + str(d) for d in errors], source=source)
        self.details["diagnostics"] = [d.to_dict() for d in self.diagnostics]
