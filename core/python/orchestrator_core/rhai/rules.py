"""YAML scheduling rules, compiled to a Rhai policy whose source you can read.

A rule file, for people who would rather not program::

    version: 1
    default: platform          # jobs no rule matches: platform (the built-in policy) or wait
    rules:
      - name: no-huge-batch
        priority: 100          # higher first; equal priorities keep file order
        when: {priority: batch, max_tokens: {gt: 4000}}
        action: reject
        code: CONTEXT_TOO_LARGE
        message: batch jobs are limited to 4000 tokens
      - name: interactive-on-a100
        priority: 50
        when: {priority: interactive}
        action: dispatch
        placement: most-vram-free   # least-loaded (default) | most-vram-free | round-robin | ready
        gpu_name: A100              # only workers on GPUs whose name contains this
      - name: hold-acme
        when: {tenant_id: acme, any: [{seeded: true}, {retry_count: {ge: 2}}]}
        action: wait
        reason: acme_window

Each queued job (in queue order) is decided by the first rule whose ``when`` matches it:
``dispatch`` it to a free worker chosen by ``placement`` (optionally only on ``pool`` and on
GPUs whose name contains ``gpu_name``; no free worker: the job waits), ``wait``, ``reject``
it with a stable error ``code``, or leave it to the built-in policy (``platform``). The
built-in policy also starts workers for models the rules want (see ``plan_decision`` in the
prelude). ``when`` is a map of job fields to conditions, all of which must hold: a value
(equality), a list (membership) or a map of operators (``eq ne in not_in gt ge lt le prefix
suffix contains exists``); ``any: [...]``, ``all: [...]`` and ``not: {...}`` combine them.
``model_ref`` conditions accept aliases. :data:`JOB_FIELDS` lists the fields.

:func:`compile_rules` returns the Rhai source; every problem (bad YAML, unknown field or
action, wrong type) raises :class:`RulesInvalid` naming the rule index and field path, with
the YAML line and column.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import yaml

from orchestrator_core.rhai.diagnostics import Diagnostic, PolicyInvalid
from orchestrator_core.scheduling.decisions import REJECT_CODES

__all__ = [
    "JOB_FIELDS",
    "OPERATORS",
    "PLACEMENT_NAMES",
    "Rule",
    "RuleSet",
    "RulesInvalid",
    "compile_rules",
    "parse_rules",
    "rhai_string",
]

FieldType = Literal["str", "str?", "int", "int?", "float", "bool", "priority", "model", "seeded"]

JOB_FIELDS: Final[Mapping[str, FieldType]] = {
    "id": "str",
    "tenant_id": "str?",
    "session_id": "str?",
    "priority": "priority",
    "promoted": "bool",
    "model_ref": "model",
    "requested_model": "str",
    "prompt_hash": "str",
    "max_tokens": "int",
    "seed": "int?",
    "seeded": "seeded",
    "temperature": "float",
    "wait_time_ms": "int",
    "retry_count": "int",
    "estimated_vram_bytes": "int",
    "position": "int",
}
"""Job fields a condition may test, with their type (``?`` = may be null). ``seeded`` is
true when the job has a seed; ``model_ref`` is the canonical model (aliases resolved)."""

OPERATORS: Final[tuple[str, ...]] = (
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "ge",
    "lt",
    "le",
    "prefix",
    "suffix",
    "contains",
    "exists",
)
"""Condition operators."""

PLACEMENT_NAMES: Final[tuple[str, ...]] = (
    "least-loaded",
    "most-vram-free",
    "round-robin",
    "ready",
)
"""Placements of a ``dispatch`` rule."""

ACTIONS: Final[tuple[str, ...]] = ("dispatch", "wait", "reject", "platform")
_ACTION_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "dispatch": ("placement", "pool", "gpu_name"),
    "wait": ("reason",),
    "reject": ("code", "message"),
    "platform": (),
}
_RULE_FIELDS = ("name", "priority", "when", "action")
_TOP_FIELDS = ("version", "default", "rules")
_COMBINATORS = ("any", "all", "not")
_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_I64 = 2**63
_NUMERIC_OPS = ("gt", "ge", "lt", "le")
_TEXT_OPS = ("prefix", "suffix", "contains")
_RHAI_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_TEXT_FNS = {"prefix": "starts_with", "suffix": "ends_with", "contains": "contains"}


class RulesInvalid(PolicyInvalid):
    """A rule file is not valid YAML or not a valid rule set. Each diagnostic names the
    field path (``rules[2].when.max_tokens.gt``) and the YAML line and column."""


def rhai_string(text: str) -> str:
    """``text`` as a Rhai string literal (quotes, backslashes and control characters
    escaped; other characters kept as UTF-8)."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: where it is in the file (``index``), its name and priority, its condition
    as a Rhai expression over ``job`` (``"true"`` when it has none), its action and the
    action's settings."""

    index: int
    name: str
    priority: int
    condition: str
    action: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """``rules[1] "name" (priority 50): dispatch placement=least-loaded``."""
        extra = " ".join(f"{k}={v}" for k, v in self.settings.items() if v is not None)
        return f'rules[{self.index}] "{self.name}" (priority {self.priority}): {self.action}' + (
            f" {extra}" if extra else ""
        )


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A parsed rule file: rules in evaluation order (priority, then file order), the
    default action, the model names conditions mention, and warnings (e.g. a rule that can
    never match because an unconditional rule comes first)."""

    rules: tuple[Rule, ...]
    default: Literal["platform", "wait"]
    models: tuple[str, ...]
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def uses_platform(self) -> bool:
        """Whether a job may be left to the built-in policy."""
        return self.default == "platform" or any(r.action == "platform" for r in self.rules)


class _Dupes(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _no_duplicates(loader: _Dupes, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, list | dict):
            continue  # unhashable keys are reported by the schema check
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Dupes.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _positions(
    node: yaml.Node | None,
    path: str,
    values: dict[str, tuple[int, int]],
    keys: dict[str, tuple[int, int]],
) -> None:
    """Record the 1-based (line, column) of every value (and every map key) by field path."""
    if node is None:
        return
    values.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = f"{path}.{key}" if path else str(key)
            keys.setdefault(sub, (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
            _positions(value_node, sub, values, keys)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _positions(item, f"{path}[{i}]", values, keys)


class _Parser:
    def __init__(
        self,
        name: str,
        values: dict[str, tuple[int, int]],
        keys: dict[str, tuple[int, int]],
    ) -> None:
        self.name = name
        self.values = values
        self.keys = keys
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.models: list[str] = []

    def _position(self, path: str, *, key: bool = False) -> tuple[int | None, int | None]:
        """YAML position of the value at ``path`` (of its key with ``key``), or of its
        nearest parent that has one."""
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while True:
            pos = self.values.get(probe)
            if pos is not None:
                return pos
            if not probe:
                return None, None
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""

    def _diag(self, severity: Literal["error", "warning"], kind: str, path: str, msg: str) -> None:
        line, column = self._position(path, key=kind == "unknown_field")
        diag = Diagnostic(
            severity, kind, f"{path}: {msg}" if path else msg, self.name, line, column
        )
        (self.errors if severity == "error" else self.warnings).append(diag)

    def error(self, kind: str, path: str, msg: str) -> None:
        self._diag("error", kind, path, msg)

    def unknown(
        self, path: str, key: Any, allowed: tuple[str, ...], what: str, where: str = ""
    ) -> None:
        guess = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else f" (allowed: {', '.join(allowed)})"
        kind = (
            "unknown_field"
            if what in ("field", "job field", "top-level key")
            else f"unknown_{what.replace(' ', '_')}"
        )
        self.error(kind, path, f"unknown {what} {key!r}{where}{hint}")

    # -- values ----------------------------------------------------------------------------

    def literal(self, ftype: FieldType, value: Any, path: str) -> str | None:
        """A Rhai literal for ``value`` of a field of type ``ftype``, or None (error noted)."""
        if value is None:
            if ftype.endswith("?"):
                return "()"
            self.error("invalid_value", path, "must not be null for this field")
            return None
        if ftype in ("str", "str?"):
            if isinstance(value, str):
                return rhai_string(value)
            self.error("invalid_value", path, f"must be a string, got {value!r}")
            return None
        if ftype == "model":
            if isinstance(value, str) and value:
                if value not in self.models:
                    self.models.append(value)
                return f"m_{self.models.index(value)}"
            self.error("invalid_value", path, f"must be a model name, got {value!r}")
            return None
        if ftype == "priority":
            if value in ("interactive", "batch"):
                return rhai_string(value)
            self.error("invalid_value", path, f"must be interactive or batch, got {value!r}")
            return None
        if ftype in ("int", "int?"):
            if isinstance(value, int) and not isinstance(value, bool) and -_I64 <= value < _I64:
                return str(value)
            self.error("invalid_value", path, f"must be an integer, got {value!r}")
            return None
        if ftype == "float":
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
                if math.isfinite(number):
                    return repr(number)
            self.error("invalid_value", path, f"must be a finite number, got {value!r}")
            return None
        # bool, seeded
        if isinstance(value, bool):
            return "true" if value else "false"
        self.error("invalid_value", path, f"must be true or false, got {value!r}")
        return None

    # -- conditions ------------------------------------------------------------------------

    def when(self, data: Any, path: str) -> str:
        """The Rhai expression of a ``when`` map (``"true"`` when empty)."""
        if data is None:
            return "true"
        if not isinstance(data, Mapping):
            self.error("invalid_value", path, f"must be a map of job fields, got {data!r}")
            return "false"
        terms: list[str] = []
        for key, cond in data.items():
            sub = f"{path}.{key}"
            if key in ("any", "all"):
                if not isinstance(cond, list) or not cond:
                    self.error("invalid_value", sub, "must be a non-empty list of conditions")
                    continue
                parts = [self.when(c, f"{sub}[{i}]") for i, c in enumerate(cond)]
                joiner = " || " if key == "any" else " && "
                terms.append("(" + joiner.join(f"({p})" for p in parts) + ")")
            elif key == "not":
                terms.append(f"!({self.when(cond, sub)})")
            elif key in JOB_FIELDS:
                terms.append(self.field_condition(str(key), JOB_FIELDS[key], cond, sub))
            else:
                self.unknown(sub, key, (*JOB_FIELDS, *_COMBINATORS), "job field")
                terms.append("false")
        if not terms:
            return "true"
        return " && ".join(terms) if len(terms) == 1 else " && ".join(f"({t})" for t in terms)

    def field_condition(self, name: str, ftype: FieldType, cond: Any, path: str) -> str:
        if isinstance(cond, Mapping):
            if not cond:
                self.error("invalid_value", path, "an operator map needs at least one operator")
                return "false"
            terms = [
                self.operator(name, ftype, str(op), v, f"{path}.{op}") for op, v in cond.items()
            ]
            return " && ".join(f"({t})" for t in terms) if len(terms) > 1 else terms[0]
        if isinstance(cond, list):
            return self.operator(name, ftype, "in", cond, path)
        return self.operator(name, ftype, "eq", cond, path)

    def operator(self, name: str, ftype: FieldType, op: str, value: Any, path: str) -> str:
        target = "job.seed" if ftype == "seeded" else f"job.{name}"
        nullable = ftype.endswith("?")
        if op not in OPERATORS:
            self.unknown(path, op, OPERATORS, "operator")
            return "false"
        if ftype == "seeded":
            if op not in ("eq", "ne"):
                self.error("invalid_operator", path, "seeded takes true or false")
                return "false"
            lit = self.literal("bool", value, path)
            want = (lit == "true") == (op == "eq")
            return f"{target} != ()" if want else f"{target} == ()"
        if op in ("eq", "ne"):
            lit = self.literal(ftype, value, path)
            return f"{target} {'==' if op == 'eq' else '!='} {lit}" if lit else "false"
        if op in ("in", "not_in"):
            if not isinstance(value, list):
                self.error("invalid_value", path, f"must be a list, got {value!r}")
                return "false"
            lits = [self.literal(ftype, v, f"{path}[{i}]") for i, v in enumerate(value)]
            if any(lit is None for lit in lits):
                return "false"
            expr = f"[{', '.join(str(lit) for lit in lits)}].contains({target})"
            return expr if op == "in" else f"!{expr}"
        if op in _NUMERIC_OPS:
            if ftype not in ("int", "int?", "float"):
                self.error("invalid_operator", path, f"{op} applies to numeric fields only")
                return "false"
            lit = self.literal(ftype, value, path)
            if lit is None or lit == "()":
                if lit == "()":
                    self.error("invalid_value", path, "must be a number")
                return "false"
            expr = f"{target} {_RHAI_OPS[op]} {lit}"
            return f"{target} != () && {expr}" if nullable else expr
        if op in _TEXT_OPS:
            if ftype not in ("str", "str?", "model"):
                self.error("invalid_operator", path, f"{op} applies to text fields only")
                return "false"
            lit = self.literal("str", value, path)
            if lit is None:
                return "false"
            expr = f"{target}.{_TEXT_FNS[op]}({lit})"
            return f"{target} != () && {expr}" if nullable else expr
        # exists
        if not nullable:
            self.error("invalid_operator", path, "exists applies to fields that may be null")
            return "false"
        lit = self.literal("bool", value, path)
        if lit is None:
            return "false"
        return f"{target} != ()" if lit == "true" else f"{target} == ()"

    # -- rules -------------------------------------------------------------------------------

    def rule(self, index: int, data: Any) -> Rule | None:
        path = f"rules[{index}]"
        if not isinstance(data, Mapping):
            self.error("invalid_value", path, f"must be a map with an action, got {data!r}")
            return None
        action = data.get("action")
        if action is None:
            self.error(
                "missing_field", f"{path}.action", f"is required (one of {', '.join(ACTIONS)})"
            )
            return None
        if action not in ACTIONS:
            self.unknown(f"{path}.action", action, ACTIONS, "action")
            return None
        allowed = (*_RULE_FIELDS, *_ACTION_FIELDS[action])
        for key in data:
            if key not in allowed:
                self.unknown(f"{path}.{key}", key, allowed, "field", f" for a {action} rule")
        name = data.get("name", f"rule-{index}")
        if not isinstance(name, str) or not name or "\n" in name:
            self.error("invalid_value", f"{path}.name", f"must be a one-line string, got {name!r}")
            name = f"rule-{index}"
        priority = data.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) >= _I64:
            self.error("invalid_value", f"{path}.priority", f"must be an integer, got {priority!r}")
            priority = 0
        condition = self.when(data.get("when"), f"{path}.when")
        settings: dict[str, Any] = {}
        if action == "dispatch":
            placement = data.get("placement", "least-loaded")
            if placement not in PLACEMENT_NAMES:
                self.unknown(f"{path}.placement", placement, PLACEMENT_NAMES, "placement")
            settings["placement"] = placement
            for key in ("pool", "gpu_name"):
                value = data.get(key)
                if value is not None and (not isinstance(value, str) or not value):
                    self.error("invalid_value", f"{path}.{key}", f"must be a string, got {value!r}")
                settings[key] = value
        elif action == "wait":
            reason = data.get("reason", "held_by_rule")
            if not isinstance(reason, str) or not _REASON_RE.match(reason):
                self.error(
                    "invalid_value",
                    f"{path}.reason",
                    f"must be a snake_case word (a-z, 0-9, _), got {reason!r}",
                )
            settings["reason"] = reason
        elif action == "reject":
            code = data.get("code")
            codes = sorted(str(c) for c in REJECT_CODES)
            if code is None:
                self.error(
                    "missing_field", f"{path}.code", f"is required (one of {', '.join(codes)})"
                )
            elif code not in codes:
                self.unknown(f"{path}.code", code, tuple(codes), "error code")
            settings["code"] = code
            message = data.get("message", "")
            if not isinstance(message, str) or len(message) > 1024:
                self.error(
                    "invalid_value",
                    f"{path}.message",
                    "must be a string of at most 1024 characters",
                )
                message = ""
            settings["message"] = message
        return Rule(index, name, priority, condition, action, settings)

    def ruleset(self, data: Any) -> RuleSet:
        if not isinstance(data, Mapping):
            self.error("invalid_value", "", "a rule file is a map with a `rules` list")
            return RuleSet((), "platform", ())
        for key in data:
            if key not in _TOP_FIELDS:
                self.unknown(str(key), key, _TOP_FIELDS, "top-level key")
        version = data.get("version", 1)
        if version != 1 or isinstance(version, bool):
            self.error("invalid_value", "version", f"must be 1, got {version!r}")
        default = data.get("default", "platform")
        if default not in ("platform", "wait"):
            self.unknown("default", default, ("platform", "wait"), "default action")
            default = "platform"
        items = data.get("rules")
        if items is None:
            self.error("missing_field", "rules", "is required (a list of rules)")
            items = []
        elif not isinstance(items, list):
            self.error("invalid_value", "rules", f"must be a list, got {items!r}")
            items = []
        rules = [r for i, item in enumerate(items) if (r := self.rule(i, item)) is not None]
        ordered = sorted(rules, key=lambda r: (-r.priority, r.index))
        for pos, rule in enumerate(ordered):
            if rule.condition == "true" and pos + 1 < len(ordered):
                shadowed = ", ".join(f"rules[{r.index}]" for r in ordered[pos + 1 :])
                self._diag(
                    "warning",
                    "unreachable_rule",
                    f"rules[{rule.index}].when",
                    f"matches every job, so {shadowed} never apply",
                )
                break
        return RuleSet(tuple(ordered), default, tuple(self.models), tuple(self.warnings))


def parse_rules(yaml_text: str, *, name: str = "rules.yaml") -> RuleSet:
    """Parse and check a rule file. Raises :class:`RulesInvalid` listing every problem
    (``rules[2].when.max_tokens.gt: must be an integer, got 'x'``) with its YAML position."""
    try:
        node = yaml.compose(yaml_text, Loader=yaml.SafeLoader)
        data = yaml.load(yaml_text, Loader=_Dupes)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesInvalid(
            [
                Diagnostic(
                    "error",
                    "yaml",
                    f"not valid YAML: {problem}",
                    name,
                    None if mark is None else mark.line + 1,
                    None if mark is None else mark.column + 1,
                )
            ],
            source=name,
        ) from None
    values: dict[str, tuple[int, int]] = {}
    keys: dict[str, tuple[int, int]] = {}
    _positions(node, "", values, keys)
    parser = _Parser(name, values, keys)
    ruleset = parser.ruleset(data)
    if parser.errors:
        raise RulesInvalid(parser.errors + parser.warnings, source=name)
    return ruleset


def _call(rule: Rule) -> str:
    s = rule.settings
    if rule.action == "dispatch":
        args = [rhai_string(s["placement"])]
        args += [rhai_string(s[k]) if s.get(k) else "()" for k in ("pool", "gpu_name")]
        return f"ctx.plan_dispatch(job, {', '.join(args)});"
    if rule.action == "wait":
        return f"ctx.plan_hold(job, {rhai_string(s['reason'])});"
    if rule.action == "reject":
        return f"ctx.plan_reject(job, {rhai_string(s['code'])}, {rhai_string(s['message'])});"
    return "ctx.plan_delegate(job);"


def _comment(text: str) -> str:
    return " ".join(text.split())


def generate_rhai(ruleset: RuleSet, *, name: str = "rules.yaml") -> str:
    """The Rhai policy of a parsed rule set (see :func:`compile_rules`)."""
    out = [
        f"// Generated from {_comment(name)} by orchestrator_core.rhai.rules:"
        " edit the YAML, not this code.",
        "// The first rule (in this order) whose condition matches a job decides it:",
    ]
    for rule in ruleset.rules:
        out.append(f"//   {_comment(rule.describe())}")
    default = "platform (the built-in policy)" if ruleset.default == "platform" else "wait"
    out.append(f"//   otherwise: {default}")
    out.append("// The built-in policy starts workers for the models of jobs that wait for one.")
    out.append("fn schedule(ctx) {")
    for i, model in enumerate(ruleset.models):
        out.append(f"    let m_{i} = ctx.resolve_model({rhai_string(model)});")
    out.append("    ctx.plan_start();")
    out.append("    for job in ctx.queue {")
    keyword = "if"
    for rule in ruleset.rules:
        out.append(f"        {keyword} {rule.condition} {{")
        out.append(f"            // rules[{rule.index}] {_comment(repr(rule.name))}")
        out.append(f"            {_call(rule)}")
        keyword = "} else if"
        if rule.condition == "true":
            break
    fallback = (
        "ctx.plan_delegate(job);"
        if ruleset.default == "platform"
        else 'ctx.plan_hold(job, "no_rule_matched");'
    )
    if ruleset.rules:
        if ruleset.rules[-1].condition != "true" and all(
            r.condition != "true" for r in ruleset.rules
        ):
            out.append("        } else {")
            out.append(f"            {fallback}")
        out.append("        }")
    else:
        out.append(f"        {fallback}")
    out.append("    }")
    out.append("    ctx.plan_decision()")
    out.append("}")
    return "\n".join(out) + "\n"


def compile_rules(yaml_text: str, *, name: str = "rules.yaml") -> str:
    """Compile a YAML rule file to the source of a Rhai policy (see the module docstring).

    Raises :class:`RulesInvalid` for bad YAML, unknown keys, fields, operators, actions or
    error codes, and values of the wrong type, each naming the rule index and field path.
    """
    return generate_rhai(parse_rules(yaml_text, name=name), name=name)
