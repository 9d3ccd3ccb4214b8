"""Tools around policies for the daemon and the CLI: load, validate, dry-run, build.

* :func:`make_policy` / :func:`load_policy` — a :class:`Policy` from text or a file; YAML
  rules (``.yaml``/``.yml``) are compiled to Rhai on the way.
* :func:`validate_policy` — compile, check the entry point and the helper calling
  convention, run once on the built-in sample snapshot: a :class:`PolicyReport` whose
  diagnostics carry lines and columns.
* :func:`dry_run` — run a policy on a saved snapshot (JSON, see
  :mod:`orchestrator_core.rhai.snapshots`): a :class:`DryRunResult` with the decision, the
  log lines and metrics, whether the built-in policy had to decide, and the built-in
  decision for comparison.
* :func:`build_policy_scheduler` / :func:`register_policies` — make ``scheduler.policy =
  "rhai"`` (``scheduler.script``) and ``"rules"`` (``scheduler.rules``) buildable from the
  configuration. The library reads no file here: the caller passes the text, or a
  ``read_file`` function.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator_core.errors import ConfigInvalid
from orchestrator_core.rhai.diagnostics import Diagnostic, PolicyInvalid
from orchestrator_core.rhai.engine import DEFAULT_RHAI_LIMITS, RhaiLimits
from orchestrator_core.rhai.prelude import prelude_helpers
from orchestrator_core.rhai.rules import compile_rules, parse_rules
from orchestrator_core.rhai.scheduler import PolicyCall, RhaiScheduler
from orchestrator_core.rhai.snapshots import sample_snapshot, snapshot_from_json
from orchestrator_core.scheduling.decisions import Decision, decision_to_dict
from orchestrator_core.scheduling.scheduler import (
    BuiltinScheduler,
    Scheduler,
    SchedulerRegistry,
    build_eviction,
    build_scheduler,
    builtin_scheduler_from_config,
    default_registry,
)
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig

__all__ = [
    "DryRunResult",
    "Policy",
    "PolicyKind",
    "PolicyReport",
    "build_policy_scheduler",
    "builtin_fallback_for",
    "dry_run",
    "load_policy",
    "make_policy",
    "policy_kind_of",
    "policy_registry",
    "register_policies",
    "validate_policy",
]

PolicyKind = Literal["rhai", "rules"]
"""``rhai`` (a script) or ``rules`` (a YAML rule file)."""

ReadFile = Callable[[str], str]
"""Returns the text of the file at a path as written in the configuration."""

# Tools report failures in their results; their schedulers log to a logger that drops
# everything (a Logger made directly has no parent, and the NullHandler stops logging's
# last-resort handler from printing).
_QUIET = logging.Logger("orchestrator_core.rhai.tools")
_QUIET.addHandler(logging.NullHandler())

_PURE_HELPERS = {"min", "max", "sum", "average", "decision_actions", "make_decision"}


def policy_kind_of(name: str) -> PolicyKind:
    """``rules`` for a name ending in ``.yaml``/``.yml``, else ``rhai``."""
    return "rules" if name.lower().endswith((".yaml", ".yml")) else "rhai"


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy ready to compile: its kind, name, the text as written, and the Rhai source
    (the text itself for a script, the generated code for rules)."""

    kind: PolicyKind
    name: str
    text: str
    source: str

    @property
    def policy_name(self) -> str:
        """The ``scheduler.policy`` value that selects it (``rhai`` or ``rules``)."""
        return self.kind


def make_policy(text: str, *, name: str = "policy.rhai", kind: PolicyKind | None = None) -> Policy:
    """A :class:`Policy` from its text; ``kind`` defaults to :func:`policy_kind_of` the
    name. YAML rules are compiled here (:class:`~orchestrator_core.rhai.rules.RulesInvalid`
    on a bad rule file)."""
    kind = kind or policy_kind_of(name)
    if kind not in ("rhai", "rules"):
        raise ValueError(f"kind: must be 'rhai' or 'rules', got {kind!r}")
    source = compile_rules(text, name=name) if kind == "rules" else text
    return Policy(kind, name, text, source)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a policy file: a Rhai script (``.rhai``) or YAML rules (``.yaml``/``.yml``).
    A thin wrapper over :func:`make_policy`; an unreadable file is a
    :class:`~orchestrator_core.rhai.diagnostics.PolicyInvalid` naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PolicyInvalid(
            [Diagnostic("error", "unreadable", f"cannot read policy: {reason}", str(p))],
            source=str(p),
        ) from None
    return make_policy(text, name=str(p))


# -- validation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """The outcome of :func:`validate_policy`. ``valid`` when there is no error diagnostic;
    ``sample`` is the run on the sample snapshot (``None`` if the policy did not compile);
    ``source`` the Rhai source (generated, for rules)."""

    valid: bool
    kind: PolicyKind
    name: str
    diagnostics: tuple[Diagnostic, ...] = ()
    functions: tuple[tuple[str, int], ...] = ()
    source: str | None = None
    sample: PolicyCall | None = None

    @property
    def errors(self) -> list[Diagnostic]:
        """The error diagnostics."""
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        """The warning diagnostics."""
        return [d for d in self.diagnostics if d.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON output: ``valid``, ``kind``, ``problems`` (error lines),
        ``warnings``, ``diagnostics``, ``functions`` and the ``sample`` run."""
        return {
            "valid": self.valid,
            "kind": self.kind,
            "name": self.name,
            "problems": [str(d) for d in self.errors],
            "warnings": [str(d) for d in self.warnings],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "functions": [f"{f}/{a}" for f, a in self.functions],
            "sample": None if self.sample is None else self.sample.to_dict(),
        }


def _convention_problems(source: str, name: str) -> list[Diagnostic]:
    """Function-style calls of method helpers (``find_x(ctx, ...)``): they never work."""
    helpers = sorted({h for h, _ in prelude_helpers()} - _PURE_HELPERS - {"platform_schedule"})
    pattern = re.compile(r"(?<![.\w])(" + "|".join(helpers) + r")\s*\(\s*ctx\b")
    out: list[Diagnostic] = []
    for lineno, line in enumerate(source.splitlines(), 1):
        code = line.split("//", 1)[0]
        for m in pattern.finditer(code):
            helper = m.group(1)
            out.append(
                Diagnostic(
                    "error",
                    "calling_convention",
                    f"{helper}(ctx, ...) is not how helpers are called",
                    name,
                    lineno,
                    m.start() + 1,
                    f"helpers are methods on ctx: write ctx.{helper}(...)",
                )
            )
    return out


def builtin_fallback_for(snapshot: SchedulingSnapshot) -> BuiltinScheduler:
    """The built-in scheduler matching a snapshot's state (its queue order, placement and
    configured eviction): the fallback of a policy run on that snapshot."""
    summary = snapshot.to_ctx(window=0)["config"]
    return BuiltinScheduler(
        name="platform",
        order=snapshot.order_name,
        placement=snapshot.placement_name,
        eviction=build_eviction(summary["eviction"]["policy"], summary["eviction"]["min_idle_s"]),
    )


def _compile(
    policy: Policy, limits: RhaiLimits, fallback: Scheduler
) -> tuple[RhaiScheduler | None, list[Diagnostic]]:
    try:
        scheduler = RhaiScheduler(
            policy.source,
            name=policy.name,
            policy=policy.kind,
            fallback=fallback,
            limits=limits,
            logger=_QUIET,
            forward_logs=False,
        )
    except PolicyInvalid as exc:
        return None, list(exc.diagnostics)
    return scheduler, []


def validate_policy(
    source: str,
    *,
    name: str = "policy.rhai",
    kind: PolicyKind | None = None,
    snapshot: SchedulingSnapshot | None = None,
    limits: RhaiLimits = DEFAULT_RHAI_LIMITS,
) -> PolicyReport:
    """Check a policy: it compiles (with the prelude), defines ``fn schedule(ctx)``, calls
    helpers method-style, and decides without failing on ``snapshot`` (default: the
    built-in sample, :func:`~orchestrator_core.rhai.snapshots.sample_snapshot`) — a decision
    the snapshot refuses counts as an error. Never raises for a bad policy: every problem is
    a diagnostic with its position."""
    kind = kind or policy_kind_of(name)
    try:
        policy = make_policy(source, name=name, kind=kind)
    except PolicyInvalid as exc:
        return PolicyReport(False, kind, name, tuple(exc.diagnostics))
    diagnostics: list[Diagnostic] = []
    if kind == "rules":
        diagnostics.extend(parse_rules(source, name=name).warnings)
    else:
        diagnostics.extend(_convention_problems(policy.source, name))
    snap = snapshot if snapshot is not None else sample_snapshot()
    scheduler, problems = _compile(policy, limits, builtin_fallback_for(snap))
    diagnostics.extend(problems)
    if scheduler is None:
        return PolicyReport(False, kind, name, tuple(diagnostics), source=policy.source)
    call = scheduler.run(snap)
    if call.failure is not None:
        diag = call.failure.to_diagnostic()
        diagnostics.append(
            Diagnostic(
                diag.severity,
                diag.kind,
                f"on the sample snapshot: {diag.message}",
                diag.where,
                diag.line,
                diag.column,
                diag.hint,
            )
        )
    valid = not any(d.severity == "error" for d in diagnostics)
    return PolicyReport(
        valid,
        kind,
        name,
        tuple(diagnostics),
        tuple(scheduler.script.functions()),
        policy.source,
        call,
    )


# -- dry run ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DryRunResult:
    """The outcome of :func:`dry_run`. ``valid`` is false when the policy does not compile
    (``diagnostics`` says why; no call was made). ``call`` is the policy's run (its
    decision, log lines, metrics, and ``call.failure`` when the built-in policy had to
    decide); ``builtin`` what the built-in policy decides on the same snapshot."""

    valid: bool
    kind: PolicyKind
    name: str
    diagnostics: tuple[Diagnostic, ...] = ()
    call: PolicyCall | None = None
    builtin: Decision | None = None

    @property
    def decision(self) -> Decision | None:
        """The decision the scheduler would execute (``None`` if the policy is invalid)."""
        return None if self.call is None else self.call.decision

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form: ``valid``, ``problems``, ``decision`` (Rhai map form), ``logs``
        (``"level: message"`` lines), ``metrics``, ``fallback`` (the failure, or ``None``),
        ``builtin_decision``, and the call's counters."""
        call = self.call
        out: dict[str, Any] = {
            "valid": self.valid,
            "kind": self.kind,
            "name": self.name,
            "problems": [str(d) for d in self.diagnostics if d.severity == "error"],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "decision": None if call is None else decision_to_dict(call.decision),
            "logs": [] if call is None else [f"{lvl}: {msg}" for lvl, msg in call.logs],
            "metrics": {} if call is None else dict(call.metrics),
            "fallback": None if call is None or call.failure is None else call.failure.to_dict(),
            "builtin_decision": None if self.builtin is None else decision_to_dict(self.builtin),
        }
        if call is not None:
            out.update(
                operations=call.operations,
                engine_us=call.engine_us,
                total_us=call.total_us,
                dropped_logs=call.dropped_logs,
                dropped_metrics=call.dropped_metrics,
            )
        return out


def dry_run(
    source: str,
    snapshot_json: str | bytes | Mapping[str, Any],
    *,
    name: str = "policy.rhai",
    kind: PolicyKind | None = None,
    limits: RhaiLimits = DEFAULT_RHAI_LIMITS,
) -> DryRunResult:
    """Run a policy once on a saved snapshot (JSON text or decoded; see
    :mod:`orchestrator_core.rhai.snapshots`). A malformed snapshot raises
    :class:`~orchestrator_core.rhai.snapshots.SnapshotInvalid`; a policy that does not
    compile gives ``valid=False`` with diagnostics."""
    snapshot = snapshot_from_json(snapshot_json)
    kind = kind or policy_kind_of(name)
    try:
        policy = make_policy(source, name=name, kind=kind)
    except PolicyInvalid as exc:
        return DryRunResult(False, kind, name, tuple(exc.diagnostics))
    fallback = builtin_fallback_for(snapshot)
    scheduler, problems = _compile(policy, limits, fallback)
    if scheduler is None:
        return DryRunResult(False, kind, name, tuple(problems))
    call = scheduler.run(snapshot)
    diagnostics = () if call.failure is None else (call.failure.to_diagnostic(),)
    return DryRunResult(True, kind, name, diagnostics, call, fallback.schedule(snapshot))


# -- configuration ---------------------------------------------------------------------------


def build_policy_scheduler(
    config: OrchestratorConfig,
    *,
    read_file: ReadFile | None = None,
    text: str | None = None,
    registry: SchedulerRegistry | None = None,
    logger: logging.Logger | None = None,
    on_call: Callable[[PolicyCall], None] | None = None,
    forward_logs: bool = True,
) -> Scheduler:
    """The scheduler of ``config.scheduler.policy``: a built-in one (from ``registry``,
    default the built-ins), or a :class:`RhaiScheduler` for ``rhai`` (``scheduler.script``)
    and ``rules`` (``scheduler.rules``), with the configuration's ``budget_ms``,
    ``max_operations`` and ``snapshot_window`` and the built-in policy as its fallback;
    ``logger``, ``on_call`` and ``forward_logs`` go to :class:`RhaiScheduler`.

    The policy's text is ``text`` if given, else ``read_file(path)``. Problems raise
    :class:`~orchestrator_core.errors.ConfigInvalid` naming the key
    (``scheduler.script: policy.rhai:3:9: error[syntax]: ...``).
    """
    sched = config.scheduler
    if sched.policy not in ("rhai", "rules"):
        return build_scheduler(config, registry)
    key = "scheduler.script" if sched.policy == "rhai" else "scheduler.rules"
    path = (sched.script if sched.policy == "rhai" else sched.rules) or "<policy>"
    if text is None:
        if read_file is None:
            raise ConfigInvalid([f"{key}: no policy text and no way to read {path!r}"])
        try:
            text = read_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigInvalid([f"{key}: cannot read {path!r}: {reason}"]) from None
    kind: PolicyKind = "rhai" if sched.policy == "rhai" else "rules"
    try:
        policy = make_policy(text, name=path, kind=kind)
        return RhaiScheduler(
            policy.source,
            name=path,
            policy=kind,
            fallback=builtin_scheduler_from_config(config),
            limits=RhaiLimits(budget_ms=sched.budget_ms, max_operations=sched.max_operations),
            logger=logger,
            on_call=on_call,
            forward_logs=forward_logs,
        )
    except PolicyInvalid as exc:
        raise PolicyInvalid(exc.diagnostics, key=key, source=path) from None


def register_policies(
    registry: SchedulerRegistry,
    *,
    read_file: ReadFile,
    logger: logging.Logger | None = None,
    on_call: Callable[[PolicyCall], None] | None = None,
    forward_logs: bool = True,
    replace: bool = False,
) -> SchedulerRegistry:
    """Register the ``rhai`` and ``rules`` policies in ``registry`` (returned), reading
    policy files through ``read_file`` (see :func:`build_policy_scheduler`)."""

    def factory(config: OrchestratorConfig) -> Scheduler:
        return build_policy_scheduler(
            config,
            read_file=read_file,
            logger=logger,
            on_call=on_call,
            forward_logs=forward_logs,
        )

    for name in ("rhai", "rules"):
        registry.register(name, factory, replace=replace)
    return registry


def policy_registry(
    *,
    read_file: ReadFile,
    logger: logging.Logger | None = None,
    on_call: Callable[[PolicyCall], None] | None = None,
    forward_logs: bool = True,
) -> SchedulerRegistry:
    """A registry with the built-in policies and ``rhai``/``rules`` (see
    :func:`register_policies`)."""
    return register_policies(
        default_registry(),
        read_file=read_file,
        logger=logger,
        on_call=on_call,
        forward_logs=forward_logs,
    )
