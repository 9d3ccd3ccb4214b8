"""YAML rules: compiled to readable Rhai, decided like they read, refused with field paths."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from orchestrator_core.rhai import (
    RhaiScheduler,
    RulesInvalid,
    builtin_fallback_for,
    compile_rules,
    compile_script,
    parse_rules,
    sample_snapshot,
    sample_snapshot_json,
    snapshot_from_json,
)
from orchestrator_core.scheduling import (
    Batch,
    Dispatch,
    Reject,
    SchedulingSnapshot,
    StartWorker,
    Wait,
    iter_actions,
)

SAMPLE: dict[str, Any] = json.loads(sample_snapshot_json())


def decide(rules: str, snapshot: SchedulingSnapshot | None = None) -> Any:
    snap = snapshot if snapshot is not None else sample_snapshot()
    scheduler = RhaiScheduler(
        compile_rules(rules),
        name="rules.yaml",
        policy="rules",
        fallback=builtin_fallback_for(snap),
    )
    call = scheduler.run(snap)
    assert call.failure is None, call.failure
    return call.decision


def rules_yaml(*rules: dict[str, Any], default: str = "wait") -> str:
    return yaml.safe_dump({"default": default, "rules": list(rules)})


def doc_with(**changes: Any) -> SchedulingSnapshot:
    doc = copy.deepcopy(SAMPLE)
    doc.update(changes)
    return snapshot_from_json(doc)


# --------------------------------------------------------------------------------------------
# the generated source
# --------------------------------------------------------------------------------------------


def test_the_generated_rhai_is_readable_and_follows_rule_priorities() -> None:
    source = compile_rules(
        """
rules:
  - name: second
    when: {priority: batch}
    action: wait
    reason: later
  - name: first
    priority: 10
    when: {model_ref: qwen-32b}
    action: reject
    code: NO_CAPACITY
    message: no qwen today
"""
    )
    assert source.startswith("// Generated from rules.yaml")
    assert source.index('rules[1] "first" (priority 10): reject') < source.index(
        'rules[0] "second" (priority 0): wait'
    )
    assert 'let m_0 = ctx.resolve_model("qwen-32b");' in source
    assert 'ctx.plan_reject(job, "NO_CAPACITY", "no qwen today");' in source
    assert "ctx.plan_delegate(job);" in source  # the default: the built-in policy
    compile_script(source, prelude=None)  # plain Rhai (helpers aside)


def test_rules_decide_job_by_job_in_queue_order() -> None:
    rules = rules_yaml(
        {
            "name": "big-batch",
            "priority": 5,
            "when": {"priority": "batch", "max_tokens": {"ge": 100}},
            "action": "reject",
            "code": "CONTEXT_TOO_LARGE",
            "message": "too long",
        },
        {
            "name": "llama",
            "when": {"model_ref": "llama-8b"},
            "action": "dispatch",
            "placement": "least-loaded",
        },
        {
            "name": "hold-qwen",
            "when": {"model_ref": {"prefix": "qwen"}},
            "action": "wait",
            "reason": "qwen_maintenance",
        },
    )
    decision = decide(rules)
    # queue: job-b-3 (qwen, batch promoted, 1024 tokens), job-i-1 (llama), job-i-2 (qwen),
    # job-i-3 (llama), job-b-1 (mistral, batch, 128 tokens), job-b-2 (llama, batch, 64)
    assert decision == Batch(
        (
            Reject("job-b-3", "CONTEXT_TOO_LARGE", "too long"),
            Dispatch("job-i-1", "a-llama-1"),
            Dispatch("job-i-3", "b-llama-1"),
            Reject("job-b-1", "CONTEXT_TOO_LARGE", "too long"),
        )
    )


def test_a_wait_decision_carries_the_first_holding_rule_reason() -> None:
    rules = rules_yaml({"when": {}, "action": "wait", "reason": "maintenance_window"})
    assert decide(rules) == Wait("maintenance_window")


def test_default_platform_alone_decides_exactly_like_the_builtin_policy() -> None:
    snap = sample_snapshot()
    builtin = builtin_fallback_for(snap).schedule(snap)
    assert decide("rules: []\n", snap) == builtin
    assert decide("rules: []\n", snap).explanation == builtin.explanation


def test_platform_rules_keep_queue_order_with_dispatch_rules() -> None:
    # job-b-2 (batch, llama) has its own rule; interactive llama jobs go to the built-in
    # policy: the earlier job-i-1 keeps a-llama-1, job-b-2 takes what is left.
    rules = rules_yaml(
        {"when": {"priority": "interactive"}, "action": "platform"},
        {"when": {"id": "job-b-2"}, "action": "dispatch"},
        default="wait",
    )
    decision = decide(rules)
    assert list(iter_actions(decision)) == [
        Dispatch("job-i-1", "a-llama-1", "pool-a"),
        Dispatch("job-i-3", "b-llama-1", "pool-b"),
    ]  # job-b-2 finds no free llama worker left: it waits


def test_the_builtin_policy_starts_workers_only_for_models_the_rules_want() -> None:
    doc = copy.deepcopy(SAMPLE)
    doc["models"].append({"model_ref": "phi", "vram_bytes": 4 * 10**9})
    doc["models"].append({"model_ref": "gemma", "vram_bytes": 4 * 10**9})
    doc["jobs"] = [
        {"job_id": "want", "model_ref": "phi", "queued_at": 1759999990.0},
        {"job_id": "held", "model_ref": "gemma", "queued_at": 1759999991.0},
    ]
    snap = snapshot_from_json(doc)
    rules = rules_yaml(
        {"when": {"model_ref": "phi"}, "action": "dispatch"},
        {"when": {"model_ref": "gemma"}, "action": "wait", "reason": "gemma_off"},
    )
    decision = decide(rules, snap)
    assert isinstance(decision, StartWorker)
    assert decision.model_ref == "phi"


def test_dispatch_rules_honour_pool_and_gpu_name() -> None:
    doc = copy.deepcopy(SAMPLE)
    doc["pools"][1]["status"] = "online"  # b-llama-1 (idle, RTX) would win least-loaded
    snap = snapshot_from_json(doc)
    on_a100 = rules_yaml({"when": {"id": "job-i-1"}, "action": "dispatch", "gpu_name": "a100"})
    assert decide(on_a100, snap) == Dispatch("job-i-1", "a-llama-1")
    on_pool_b = rules_yaml({"when": {"id": "job-i-1"}, "action": "dispatch", "pool": "pool-b"})
    assert decide(on_pool_b, snap) == Dispatch("job-i-1", "b-llama-1")
    anywhere = rules_yaml({"when": {"id": "job-i-1"}, "action": "dispatch"})
    assert decide(anywhere, snap) == Dispatch("job-i-1", "b-llama-1")
    vram = rules_yaml(
        {"when": {"id": "job-i-1"}, "action": "dispatch", "placement": "most-vram-free"}
    )
    assert decide(vram, snap) == Dispatch("job-i-1", "a-llama-1")


def test_dispatch_rules_respect_tenant_quotas() -> None:
    # globex runs 1 of 1: its qwen job waits (quota_action wait) or is rejected
    doc = copy.deepcopy(SAMPLE)
    doc["pools"][0]["workers"][2]["status"] = "ready"  # free the qwen worker
    doc["pools"][0]["workers"][2]["active_jobs"] = 0
    doc["jobs"] = [j for j in doc["jobs"] if j["job_id"] == "job-i-2"]
    rules = rules_yaml({"when": {"id": "job-i-2"}, "action": "dispatch"})
    assert decide(rules, snapshot_from_json(doc)) == Wait("tenant_at_quota")
    doc["settings"]["quota_action"] = "reject"
    decision = decide(rules, snapshot_from_json(doc))
    assert isinstance(decision, Reject)
    assert (decision.job_id, str(decision.code)) == ("job-i-2", "QUOTA_EXCEEDED")


# --------------------------------------------------------------------------------------------
# conditions
# --------------------------------------------------------------------------------------------

ALL = {"job-b-3", "job-i-1", "job-i-2", "job-b-1", "job-b-2", "job-i-3"}

CONDITIONS: list[tuple[Any, set[str]]] = [
    ({}, ALL),
    ({"priority": "batch"}, {"job-b-3", "job-b-1", "job-b-2"}),
    ({"promoted": True}, {"job-b-3"}),
    ({"tenant_id": "acme"}, {"job-b-3", "job-i-1", "job-b-1"}),
    ({"tenant_id": None}, {"job-i-3"}),
    ({"tenant_id": {"exists": False}}, {"job-i-3"}),
    ({"tenant_id": {"ne": "acme"}}, {"job-i-2", "job-b-2", "job-i-3"}),
    ({"tenant_id": ["globex", "initech"]}, {"job-i-2", "job-b-2"}),
    ({"tenant_id": {"not_in": ["acme", None]}}, {"job-i-2", "job-b-2"}),
    ({"tenant_id": {"prefix": "glo"}}, {"job-i-2"}),
    ({"session_id": {"suffix": "-2"}}, {"job-b-2"}),
    ({"model_ref": "llama-8b"}, {"job-i-1", "job-b-2", "job-i-3"}),  # an alias
    ({"requested_model": "llama-8b"}, {"job-i-1"}),
    ({"model_ref": {"contains": "qwen"}}, {"job-b-3", "job-i-2"}),
    ({"max_tokens": {"gt": 256}}, {"job-b-3", "job-i-2", "job-i-3"}),
    ({"max_tokens": {"ge": 256, "lt": 1024}}, {"job-i-1", "job-i-2"}),
    ({"max_tokens": {"le": 128}}, {"job-b-1", "job-b-2"}),
    ({"seeded": True}, {"job-b-1", "job-b-2"}),
    ({"seeded": False}, ALL - {"job-b-1", "job-b-2"}),
    ({"seed": 42}, {"job-b-1"}),
    ({"seed": {"gt": 10}}, {"job-b-1"}),
    ({"temperature": {"lt": 0.5}}, {"job-b-3", "job-b-1", "job-b-2"}),
    ({"temperature": 0.7}, {"job-i-1", "job-i-2"}),
    ({"retry_count": {"ge": 1}}, {"job-b-2"}),
    ({"wait_time_ms": {"gt": 60000}}, {"job-b-3", "job-b-1"}),
    ({"estimated_vram_bytes": {"ge": 30000000000}}, {"job-b-3", "job-i-2"}),
    ({"position": {"lt": 2}}, {"job-b-3", "job-i-1"}),
    ({"id": {"in": ["job-i-1", "nope"]}}, {"job-i-1"}),
    ({"prompt_hash": {"prefix": "a"}}, {"job-i-1"}),
    ({"any": [{"seeded": True}, {"promoted": True}]}, {"job-b-1", "job-b-2", "job-b-3"}),
    ({"all": [{"priority": "batch"}, {"tenant_id": "acme"}]}, {"job-b-3", "job-b-1"}),
    ({"not": {"priority": "batch"}}, {"job-i-1", "job-i-2", "job-i-3"}),
    ({"priority": "batch", "not": {"seeded": True}}, {"job-b-3"}),
]


@pytest.mark.parametrize(("when", "matching"), CONDITIONS, ids=[str(c[0]) for c in CONDITIONS])
def test_condition(when: Any, matching: set[str]) -> None:
    rules = rules_yaml(
        {"when": when, "action": "reject", "code": "INVALID_REQUEST", "message": "matched"}
    )
    decision = decide(rules)
    rejected = {a.job_id for a in iter_actions(decision) if isinstance(a, Reject)}
    assert rejected == matching


TRICKY = ['"); throw "x"; //', "${ctx.now}", "\\", "\n\t\r\x00", "`${1}`", "é ✓ 🚀"]


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(st.text(max_size=40), st.sampled_from(TRICKY)),
    st.one_of(st.text(max_size=20), st.sampled_from(["acme", "globex", "initech", *TRICKY])),
)
def test_any_text_in_a_rule_stays_data(message: str, tenant: str) -> None:
    """Quotes, backslashes, newlines, `${...}` in YAML values cannot change the program."""
    rules = rules_yaml(
        {
            "when": {"tenant_id": {"ne": tenant}},
            "action": "reject",
            "code": "FORBIDDEN",
            "message": message,
        },
    )
    decision = decide(rules)
    rejects = [a for a in iter_actions(decision) if isinstance(a, Reject)]
    expected = {"job-b-3", "job-i-1", "job-i-2", "job-b-1", "job-b-2", "job-i-3"} - (
        {
            j
            for j, t in (
                ("job-b-3", "acme"),
                ("job-i-1", "acme"),
                ("job-i-2", "globex"),
                ("job-b-1", "acme"),
                ("job-b-2", "initech"),
            )
            if t == tenant
        }
    )
    assert {r.job_id for r in rejects} == expected
    assert all(r.message == message for r in rejects)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

ERRORS: list[tuple[str, list[str]]] = [
    ("- a\n- b\n", ["a rule file is a map with a `rules` list"]),
    ("default: wait\n", ["rules: is required"]),
    ("rules: 3\n", ["rules: must be a list"]),
    ("rules: [3]\n", ["1:9: error[invalid_value]: rules[0]: must be a map with an action"]),
    ("rules:\n  - when: {}\n", ["rules[0].action: is required (one of dispatch, wait"]),
    (
        "rules:\n  - action: dispatchh\n",
        ["2:13", "rules[0].action: unknown action 'dispatchh'", "did you mean 'dispatch'?"],
    ),
    (
        "rules:\n  - action: wait\n    placement: ready\n",
        [
            "3:5",
            "rules[0].placement: unknown field 'placement' for a wait rule",
            "(allowed: name, priority, when, action, reason)",
        ],
    ),
    (
        "rules:\n  - action: wait\n    when: {priorty: batch}\n",
        ["3:12", "rules[0].when.priorty: unknown job field 'priorty'", "did you mean 'priority'?"],
    ),
    (
        "rules:\n  - action: wait\n    when: {max_tokens: {gt: many}}\n",
        ["3:29", "rules[0].when.max_tokens.gt: must be an integer, got 'many'"],
    ),
    (
        "rules:\n  - action: wait\n    when: {max_tokens: {above: 3}}\n",
        ["rules[0].when.max_tokens.above: unknown operator 'above'"],
    ),
    (
        "rules:\n  - action: wait\n    when: {tenant_id: {gt: a}}\n",
        ["rules[0].when.tenant_id.gt: gt applies to numeric fields only"],
    ),
    (
        "rules:\n  - action: wait\n    when: {max_tokens: {prefix: '1'}}\n",
        ["rules[0].when.max_tokens.prefix: prefix applies to text fields only"],
    ),
    (
        "rules:\n  - action: wait\n    when: {priority: {exists: true}}\n",
        ["rules[0].when.priority.exists: exists applies to fields that may be null"],
    ),
    (
        "rules:\n  - action: wait\n    when: {priority: urgent}\n",
        ["rules[0].when.priority: must be interactive or batch, got 'urgent'"],
    ),
    (
        "rules:\n  - action: wait\n    when: {promoted: 1}\n",
        ["rules[0].when.promoted: must be true or false, got 1"],
    ),
    (
        "rules:\n  - action: wait\n    when: {seeded: {gt: 1}}\n",
        ["rules[0].when.seeded.gt: seeded takes true or false"],
    ),
    (
        "rules:\n  - action: wait\n    when: {max_tokens: null}\n",
        ["rules[0].when.max_tokens: must not be null for this field"],
    ),
    (
        "rules:\n  - action: wait\n    when: {any: []}\n",
        ["rules[0].when.any: must be a non-empty list of conditions"],
    ),
    (
        "rules:\n  - action: wait\n    when: {max_tokens: {}}\n",
        ["rules[0].when.max_tokens: an operator map needs at least one operator"],
    ),
    (
        "rules:\n  - action: wait\n    when: [priority]\n",
        ["rules[0].when: must be a map of job fields"],
    ),
    (
        "rules:\n  - action: wait\n    reason: Not Snake\n",
        ["rules[0].reason: must be a snake_case word"],
    ),
    ("rules:\n  - action: reject\n", ["rules[0].code: is required (one of CONTEXT_TOO_LARGE"]),
    (
        "rules:\n  - action: reject\n    code: CANCELLED\n",
        ["rules[0].code: unknown error code 'CANCELLED'"],
    ),
    (
        "rules:\n  - action: reject\n    code: NO_CAPACITY\n    message: [1]\n",
        ["rules[0].message: must be a string of at most 1024 characters"],
    ),
    (
        "rules:\n  - action: dispatch\n    placement: random\n",
        ["rules[0].placement: unknown placement 'random'"],
    ),
    ("rules:\n  - action: dispatch\n    pool: 3\n", ["rules[0].pool: must be a string, got 3"]),
    (
        "rules:\n  - action: wait\n    priority: high\n",
        ["rules[0].priority: must be an integer, got 'high'"],
    ),
    ("version: 2\nrules: []\n", ["version: must be 1, got 2"]),
    ("default: reject\nrules: []\n", ["default: unknown default action 'reject'"]),
    ("rulez: []\n", ["rulez: unknown top-level key 'rulez'; did you mean 'rules'?"]),
    ("rules:\n  - action: wait\n    action: wait\n", ["3:5", "duplicate key 'action'"]),
    ("rules: [\n  {action: wait\n", ["error[yaml]: not valid YAML"]),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1][0][:50] for e in ERRORS])
def test_a_bad_rule_file_is_refused_naming_the_field(text: str, expected: list[str]) -> None:
    with pytest.raises(RulesInvalid) as info:
        compile_rules(text)
    problems = "\n".join(info.value.problems)
    for part in expected:
        assert part in problems
    assert problems.startswith("rules.yaml")


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = (
        "rules:\n  - action: fly\n  - action: wait\n    when: {colour: red}\n  - action: reject\n"
    )
    with pytest.raises(RulesInvalid) as info:
        compile_rules(text)
    assert len(info.value.problems) == 3
    assert [d.line for d in info.value.diagnostics] == [2, 4, 5]  # no warning follows


def test_a_rule_that_matches_everything_makes_later_rules_unreachable() -> None:
    ruleset = parse_rules(
        "rules:\n  - {action: wait}\n  - {action: dispatch, when: {priority: batch}}\n"
    )
    [warning] = ruleset.warnings
    assert warning.kind == "unreachable_rule"
    assert "rules[1] never apply" in warning.message
    assert "else" not in compile_rules(
        "rules:\n  - {action: wait}\n  - {action: dispatch, when: {priority: batch}}\n"
    )
