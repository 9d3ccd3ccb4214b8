"""RhaiScheduler: a Rhai policy behind the same :class:`Scheduler` protocol as the built-ins.

One decision (:meth:`RhaiScheduler.run`):

1. build ``ctx`` from the snapshot (:class:`~orchestrator_core.rhai.context.ContextBuilder`:
   the queue windowed per order class, ``free_workers``), with the built-in decision as
   ``ctx.platform`` when the policy names ``platform_schedule``;
2. call ``schedule(ctx)`` inside the sandbox, within ``budget_ms``;
3. read the returned map (:func:`~orchestrator_core.scheduling.decision_from_dict`) and check
   it against the snapshot (:func:`~orchestrator_core.scheduling.validate_decision`);
4. if the script raised, exceeded a limit, timed out, returned something that is not a
   decision, or a decision the snapshot refuses, the built-in policy decides this call
   instead. The failure is logged once per distinct failure (and every 100th repeat) as
   event ``scheduler.policy_failed`` and counted in :attr:`RhaiScheduler.stats`.

The policy's log lines and metrics of each call are in :attr:`PolicyCall.logs` /
:attr:`PolicyCall.metrics` (the last call: :attr:`RhaiScheduler.last_call`; every call:
the ``on_call`` hook) and forwarded to :mod:`logging` as event ``scheduler.policy_log``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from orchestrator_core.rhai.context import ContextBuilder, needs_platform_decision
from orchestrator_core.rhai.diagnostics import (
    Diagnostic,
    PolicyInvalid,
    diagnostic_from_error,
    hint_for,
    script_position,
)
from orchestrator_core.rhai.engine import (
    DEFAULT_RHAI_LIMITS,
    CallResult,
    CompiledScript,
    RhaiCompileError,
    RhaiError,
    RhaiLimits,
    compile_script,
)
from orchestrator_core.rhai.prelude import PRELUDE_SOURCE, prelude_helpers
from orchestrator_core.scheduling.decisions import (
    Decision,
    DecisionInvalid,
    decision_from_dict,
    decision_to_dict,
)
from orchestrator_core.scheduling.scheduler import BuiltinScheduler, Scheduler
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot
from orchestrator_core.scheduling.validation import Refusal, validate_decision

__all__ = [
    "ENTRY_POINT",
    "EVENT_POLICY_FAILED",
    "EVENT_POLICY_LOG",
    "PolicyCall",
    "PolicyFailure",
    "RhaiScheduler",
    "RhaiSchedulerStats",
]

ENTRY_POINT: Final[str] = "schedule"
"""The function every policy defines, with one parameter: ``fn schedule(ctx)``."""
EVENT_POLICY_FAILED: Final[str] = "scheduler.policy_failed"
"""Log event of a policy call that failed (the built-in policy decided instead)."""
EVENT_POLICY_LOG: Final[str] = "scheduler.policy_log"
"""Log event of a line a policy logged (``log_info(...)``, ``print(...)``, ...)."""

INVALID_DECISION: Final[str] = "invalid_decision"
"""Failure kind: the script returned something that is not a decision map."""
REFUSED_DECISION: Final[str] = "refused_decision"
"""Failure kind: the decision does not fit the snapshot (see :attr:`PolicyFailure.refusals`)."""

_LOG_EVERY_REPEAT = 100
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


@dataclass(frozen=True, slots=True)
class PolicyFailure:
    """Why a policy call did not decide. ``kind`` is the engine's error kind (``throw``,
    ``max_operations``, ``timeout``, ``function_not_found``, ``unconvertible_return``, ...),
    ``invalid_decision`` (``field`` names the bad field) or ``refused_decision``
    (``refusals`` says why). ``where`` is the script name or ``"prelude"``."""

    kind: str
    message: str
    line: int | None = None
    column: int | None = None
    where: str | None = None
    traceback: tuple[str, ...] = ()
    field: str | None = None
    refusals: tuple[Refusal, ...] = ()
    hint: str | None = None

    def describe(self) -> str:
        """One line: ``kind at name:line:col: message``."""
        at = ""
        if self.line is not None:
            at = f" at {self.where or 'script'}:{self.line}"
            if self.column is not None:
                at += f":{self.column}"
        return f"{self.kind}{at}: {self.message}"

    def to_diagnostic(self) -> Diagnostic:
        """The failure as an error :class:`Diagnostic`."""
        return Diagnostic(
            "error", self.kind, self.message, self.where, self.line, self.column, self.hint
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for logs and JSON output."""
        return {
            "kind": self.kind,
            "message": self.message,
            "line": self.line,
            "column": self.column,
            "where": self.where,
            "traceback": list(self.traceback),
            "field": self.field,
            "refusals": [r.to_dict() for r in self.refusals],
            "hint": self.hint,
        }


@dataclass(frozen=True, slots=True)
class PolicyCall:
    """What one decision did.

    ``decision`` is what :meth:`RhaiScheduler.schedule` returned: the script's decision, or
    the built-in one when ``failure`` is set. ``returned`` is the script's raw return value
    (``None`` when it failed before returning). Times are microseconds: ``ctx_us`` building
    ctx (and the built-in decision it carries), ``engine_us`` inside the engine, ``total_us``
    the whole decision including the fallback."""

    script: str
    decision: Decision
    failure: PolicyFailure | None = None
    returned: Any = None
    logs: tuple[tuple[str, str], ...] = ()
    metrics: tuple[tuple[str, float], ...] = ()
    dropped_logs: int = 0
    dropped_metrics: int = 0
    operations: int = 0
    ctx_us: int = 0
    engine_us: int = 0
    total_us: int = 0

    @property
    def fallback(self) -> bool:
        """True when the built-in policy decided this call."""
        return self.failure is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (decision in its Rhai map form) for JSON output."""
        return {
            "script": self.script,
            "decision": decision_to_dict(self.decision),
            "fallback": None if self.failure is None else self.failure.to_dict(),
            "logs": [{"level": lvl, "message": msg} for lvl, msg in self.logs],
            "metrics": [{"name": n, "value": v} for n, v in self.metrics],
            "dropped_logs": self.dropped_logs,
            "dropped_metrics": self.dropped_metrics,
            "operations": self.operations,
            "ctx_us": self.ctx_us,
            "engine_us": self.engine_us,
            "total_us": self.total_us,
        }


@dataclass(frozen=True, slots=True)
class RhaiSchedulerStats:
    """Counters of a :class:`RhaiScheduler` since it was built (a consistent copy).

    ``calls`` = ``decided`` (the script's decision was used) + ``fallbacks``;
    ``errors_by_kind`` counts fallbacks by :attr:`PolicyFailure.kind`;
    ``refusals_by_code`` counts refused actions by
    :class:`~orchestrator_core.scheduling.RefusalCode`."""

    calls: int = 0
    decided: int = 0
    fallbacks: int = 0
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    refusals_by_code: Mapping[str, int] = field(default_factory=dict)
    log_lines: int = 0
    dropped_logs: int = 0
    last_failure: PolicyFailure | None = None

    @property
    def errors(self) -> int:
        """Failed calls (each one fell back to the built-in policy)."""
        return self.fallbacks

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for ``GET /v2/scheduler`` and metrics)."""
        return {
            "calls": self.calls,
            "decided": self.decided,
            "fallbacks": self.fallbacks,
            "errors_by_kind": dict(self.errors_by_kind),
            "refusals_by_code": dict(self.refusals_by_code),
            "log_lines": self.log_lines,
            "dropped_logs": self.dropped_logs,
            "last_failure": None if self.last_failure is None else self.last_failure.to_dict(),
        }


def _elapsed_us(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)


class RhaiScheduler:
    """A scheduling policy written in Rhai (see the module docstring).

    Arguments:
        source: Rhai source defining ``fn schedule(ctx)``.
        name: the script's name in errors and logs (e.g. its file name).
        policy: the policy name reported as :attr:`name` (``rhai``, or ``rules`` for
            compiled YAML rules).
        fallback: the built-in scheduler that decides when the script fails, and whose
            decision ``platform_schedule`` returns (default: ``BuiltinScheduler("platform")``).
        limits: sandbox limits (``budget_ms`` is the wall-clock budget of each call).
        window: jobs per order class in ``ctx.queue`` (``None``: the configuration's
            ``scheduler.snapshot_window``).
        logger: where failures and the script's log lines go (default:
            ``logging.getLogger("orchestrator_core.rhai")``).
        forward_logs: forward the script's log lines to ``logger``.
        on_call: called with the :class:`PolicyCall` of every decision (for metrics).

    Raises :class:`~orchestrator_core.rhai.diagnostics.PolicyInvalid` if the source does not
    compile or lacks ``fn schedule(ctx)``. Thread-safe: decisions may run on any thread.
    """

    def __init__(
        self,
        source: str,
        *,
        name: str = "policy",
        policy: str = "rhai",
        fallback: Scheduler | None = None,
        limits: RhaiLimits = DEFAULT_RHAI_LIMITS,
        window: int | None = None,
        logger: logging.Logger | None = None,
        forward_logs: bool = True,
        on_call: Callable[[PolicyCall], None] | None = None,
    ) -> None:
        self._policy = policy
        self.script_name = name
        self.source = source
        self.limits = limits
        self.fallback: Scheduler = (
            fallback if fallback is not None else BuiltinScheduler(name="platform")
        )
        self.logger = logger if logger is not None else logging.getLogger("orchestrator_core.rhai")
        self.forward_logs = forward_logs
        self.on_call = on_call
        self.uses_platform = needs_platform_decision(source)
        self.script = compile_policy(source, name=name, limits=limits)
        self._ctx = ContextBuilder(window)
        self._ctx_lock = threading.Lock()
        self._lock = threading.Lock()
        self._calls = 0
        self._fallbacks = 0
        self._errors: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._log_lines = 0
        self._dropped_logs = 0
        self._last_failure: PolicyFailure | None = None
        self._last_call: PolicyCall | None = None
        self._last_logged: tuple[Any, ...] | None = None
        self._repeats = 0

    # -- Scheduler protocol ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Policy name (``rhai`` or ``rules``)."""
        return self._policy

    def schedule(self, snapshot: SchedulingSnapshot) -> Decision:
        """One decision: the script's, or the built-in policy's if the script failed."""
        return self.run(snapshot).decision

    def __repr__(self) -> str:
        return f"RhaiScheduler(policy={self._policy!r}, script={self.script_name!r})"

    # -- observability ------------------------------------------------------------------------

    @property
    def stats(self) -> RhaiSchedulerStats:
        """Counters since this scheduler was built."""
        with self._lock:
            return RhaiSchedulerStats(
                calls=self._calls,
                decided=self._calls - self._fallbacks,
                fallbacks=self._fallbacks,
                errors_by_kind=dict(self._errors),
                refusals_by_code=dict(self._refusals),
                log_lines=self._log_lines,
                dropped_logs=self._dropped_logs,
                last_failure=self._last_failure,
            )

    @property
    def last_call(self) -> PolicyCall | None:
        """The most recent decision's :class:`PolicyCall` (``None`` before the first)."""
        with self._lock:
            return self._last_call

    # -- one decision ---------------------------------------------------------------------------

    def run(self, snapshot: SchedulingSnapshot) -> PolicyCall:
        """Decide for ``snapshot`` and report how (see the module docstring)."""
        started = time.perf_counter()
        platform = self.fallback.schedule(snapshot) if self.uses_platform else None
        with self._ctx_lock:
            ctx = self._ctx.build(snapshot, platform)
        ctx_us = _elapsed_us(started)
        result: CallResult | None = None
        failure: PolicyFailure | None = None
        decision: Decision | None = None
        logs: tuple[tuple[str, str], ...] = ()
        try:
            result = self.script.call(ENTRY_POINT, [ctx])
        except RhaiError as err:
            logs = tuple(err.logs)
            where, line, column, note = script_position(err)
            failure = PolicyFailure(
                err.kind,
                err.message + note,
                line,
                column,
                where or self.script_name,
                tuple(err.traceback),
                hint=hint_for(err.kind, err.message, [h for h, _ in prelude_helpers()]),
            )
        if result is not None:
            logs = tuple(result.logs)
            decision, failure = self._check(result.value, snapshot, platform)
        if failure is not None or decision is None:
            decision = platform if platform is not None else self.fallback.schedule(snapshot)
        call = PolicyCall(
            script=self.script_name,
            decision=decision,
            failure=failure,
            returned=None if result is None else result.value,
            logs=logs,
            metrics=() if result is None else tuple(result.metrics),
            dropped_logs=0 if result is None else result.dropped_logs,
            dropped_metrics=0 if result is None else result.dropped_metrics,
            operations=0 if result is None else result.operations,
            ctx_us=ctx_us,
            engine_us=0 if result is None else result.elapsed_us,
            total_us=_elapsed_us(started),
        )
        self._record(call)
        if self.on_call is not None:
            self.on_call(call)
        return call

    def _check(
        self, value: Any, snapshot: SchedulingSnapshot, platform: Decision | None
    ) -> tuple[Decision | None, PolicyFailure | None]:
        """The script's decision, or why it cannot be used."""
        try:
            decision = decision_from_dict(value)
        except DecisionInvalid as exc:
            return None, PolicyFailure(
                INVALID_DECISION,
                f"schedule() returned an invalid decision: {exc.message}",
                where=self.script_name,
                field=exc.field,
                hint='return a decision map such as #{ action: "wait", reason: "..." }',
            )
        if platform is not None and decision == platform:
            return platform, None  # the built-in decision, with its explanation
        refusals = validate_decision(decision, snapshot)
        if refusals:
            return None, PolicyFailure(
                REFUSED_DECISION,
                "; ".join(r.message for r in refusals),
                where=self.script_name,
                field=refusals[0].field,
                refusals=tuple(refusals),
            )
        return _annotated(decision, self._policy, self.script_name), None

    def _record(self, call: PolicyCall) -> None:
        failure = call.failure
        with self._lock:
            self._calls += 1
            self._last_call = call
            self._log_lines += len(call.logs)
            self._dropped_logs += call.dropped_logs
            log_it = False
            repeats = 0
            if failure is not None:
                self._fallbacks += 1
                self._errors[failure.kind] += 1
                for r in failure.refusals:
                    self._refusals[str(r.code)] += 1
                self._last_failure = failure
                signature = (failure.kind, failure.line, failure.column, failure.message)
                if signature != self._last_logged:
                    self._last_logged, self._repeats, log_it = signature, 0, True
                else:
                    self._repeats += 1
                    repeats = self._repeats
                    log_it = repeats % _LOG_EVERY_REPEAT == 0
        if self.forward_logs:
            for level, message in call.logs:
                self.logger.log(
                    _LEVELS.get(level, logging.INFO),
                    "policy %s: %s",
                    self.script_name,
                    message,
                    extra={
                        "event": EVENT_POLICY_LOG,
                        "script": self.script_name,
                        "fields": {"script": self.script_name, "policy_level": level},
                    },
                )
        if failure is not None and log_it:
            self._log_failure(failure, repeats)

    def _log_failure(self, failure: PolicyFailure, repeats: int) -> None:
        fields = {
            "script": self.script_name,
            "policy": self._policy,
            "kind": failure.kind,
            "line": failure.line,
            "column": failure.column,
            "error": failure.message,
            "field": failure.field,
            "repeats": repeats,
        }
        again = f" (repeated {repeats} times)" if repeats else ""
        self.logger.warning(
            "policy %s failed, the built-in policy decided: %s%s",
            self.script_name,
            failure.describe(),
            again,
            extra={"event": EVENT_POLICY_FAILED, **fields, "fields": fields},
        )


def _annotated(decision: Decision, policy: str, script: str) -> Decision:
    """The decision with ``policy``/``script`` added to its explanation."""
    note = {"policy": policy, "script": script, **dict(decision.explanation)}
    return replace(decision, explanation=note)


def compile_policy(
    source: str, *, name: str = "policy", limits: RhaiLimits = DEFAULT_RHAI_LIMITS
) -> CompiledScript:
    """Compile a policy with the prelude and check its entry point ``fn schedule(ctx)``.

    Raises :class:`~orchestrator_core.rhai.diagnostics.PolicyInvalid` with the position of
    a syntax error, a collision with a prelude helper, or a missing/mis-declared entry point.
    """
    try:
        script = compile_script(source, prelude=PRELUDE_SOURCE, limits=limits, name=name)
    except RhaiCompileError as err:
        raise PolicyInvalid([diagnostic_from_error(err)], source=name) from None
    if not script.has_function(ENTRY_POINT, 1):
        arities = sorted(a for f, a in script.functions() if f == ENTRY_POINT)
        if arities:
            msg = (
                f"fn {ENTRY_POINT} takes {arities[0]} parameter(s); the entry point is"
                f" fn {ENTRY_POINT}(ctx) with exactly one"
            )
        else:
            msg = f"no fn {ENTRY_POINT}(ctx) defined: every policy needs this entry point"
        raise PolicyInvalid(
            [Diagnostic("error", "missing_entry_point", msg, name)], source=name
        ) from None
    return script
