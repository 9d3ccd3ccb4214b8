"""Rhai scheduling policies: scripts (and YAML rules compiled to scripts) that decide what
the orchestrator does next, run by the real Rhai engine in a sandbox.

* :mod:`~orchestrator_core.rhai.engine` — the embedded engine: limits, compiling, calling.
* :class:`RhaiScheduler` — a policy behind the :class:`~orchestrator_core.scheduling.Scheduler`
  protocol, falling back to the built-in policy when the script fails.
* the helper prelude (:data:`PRELUDE_SOURCE`), the ctx (:class:`ContextBuilder`);
* YAML rules (:func:`compile_rules`); saved snapshots (:func:`snapshot_from_json`);
* tools: :func:`validate_policy`, :func:`dry_run`, :func:`load_policy`,
  :func:`build_policy_scheduler`, :func:`register_policies`.

docs/policies.md is the guide: ctx fields, helpers, decisions, limits, rules, tools.
"""

from orchestrator_core.rhai.context import (
    PLATFORM_HELPERS,
    ContextBuilder,
    empty_plan,
    needs_platform_decision,
)
from orchestrator_core.rhai.diagnostics import Diagnostic, PolicyInvalid
from orchestrator_core.rhai.engine import (
    DEFAULT_RHAI_LIMITS,
    RHAI_VERSION,
    CallResult,
    CompiledScript,
    RhaiCompileError,
    RhaiConversionError,
    RhaiError,
    RhaiLimitExceeded,
    RhaiLimits,
    RhaiRuntimeError,
    RhaiTimeout,
    compile_script,
)
from orchestrator_core.rhai.prelude import PRELUDE_SOURCE, prelude_helpers
from orchestrator_core.rhai.rules import (
    JOB_FIELDS,
    Rule,
    RuleSet,
    RulesInvalid,
    compile_rules,
    parse_rules,
)
from orchestrator_core.rhai.scheduler import (
    ENTRY_POINT,
    EVENT_POLICY_FAILED,
    EVENT_POLICY_LOG,
    PolicyCall,
    PolicyFailure,
    RhaiScheduler,
    RhaiSchedulerStats,
    compile_policy,
)
from orchestrator_core.rhai.snapshots import (
    SNAPSHOT_FORMAT,
    SnapshotInvalid,
    sample_snapshot,
    sample_snapshot_json,
    snapshot_document,
    snapshot_from_json,
    snapshot_to_json,
)
from orchestrator_core.rhai.tools import (
    DryRunResult,
    Policy,
    PolicyKind,
    PolicyReport,
    build_policy_scheduler,
    builtin_fallback_for,
    dry_run,
    load_policy,
    make_policy,
    policy_kind_of,
    policy_registry,
    register_policies,
    validate_policy,
)

__all__ = [
    "DEFAULT_RHAI_LIMITS",
    "ENTRY_POINT",
    "EVENT_POLICY_FAILED",
    "EVENT_POLICY_LOG",
    "JOB_FIELDS",
    "PLATFORM_HELPERS",
    "PRELUDE_SOURCE",
    "RHAI_VERSION",
    "SNAPSHOT_FORMAT",
    "CallResult",
    "CompiledScript",
    "ContextBuilder",
    "Diagnostic",
    "DryRunResult",
    "Policy",
    "PolicyCall",
    "PolicyFailure",
    "PolicyInvalid",
    "PolicyKind",
    "PolicyReport",
    "RhaiCompileError",
    "RhaiConversionError",
    "RhaiError",
    "RhaiLimitExceeded",
    "RhaiLimits",
    "RhaiRuntimeError",
    "RhaiScheduler",
    "RhaiSchedulerStats",
    "RhaiTimeout",
    "Rule",
    "RuleSet",
    "RulesInvalid",
    "SnapshotInvalid",
    "build_policy_scheduler",
    "builtin_fallback_for",
    "compile_policy",
    "compile_rules",
    "compile_script",
    "dry_run",
    "empty_plan",
    "load_policy",
    "make_policy",
    "needs_platform_decision",
    "parse_rules",
    "policy_kind_of",
    "policy_registry",
    "prelude_helpers",
    "register_policies",
    "sample_snapshot",
    "sample_snapshot_json",
    "snapshot_document",
    "snapshot_from_json",
    "snapshot_to_json",
    "validate_policy",
]
