"""Decisions as values and their Rhai dict form (docs/design/rhai-policies.md)."""

from __future__ import annotations

from typing import Any

import pytest
from orchestrator_core import ErrorCode
from orchestrator_core.scheduling import (
    Batch,
    Decision,
    DecisionInvalid,
    Dispatch,
    EvictWorker,
    Reject,
    StartWorker,
    Wait,
    decision_from_dict,
    decision_to_dict,
    iter_actions,
)

ROUND_TRIPS: list[tuple[str, Decision, dict[str, Any]]] = [
    (
        "a dispatch is job_id and worker_id, plus pool_id when known",
        Dispatch("j1", "w1", "p1"),
        {"action": "dispatch", "job_id": "j1", "worker_id": "w1", "pool_id": "p1"},
    ),
    (
        "a dispatch from a script may omit the pool",
        Dispatch("j1", "w1"),
        {"action": "dispatch", "job_id": "j1", "worker_id": "w1"},
    ),
    (
        "a wait carries its reason and retry hint",
        Wait("no_ready_worker", 500),
        {"action": "wait", "reason": "no_ready_worker", "retry_after_ms": 500},
    ),
    (
        "a start names pool, gpu and model",
        StartWorker("p1", "g0", "llama", "cold_start"),
        {
            "action": "start_worker",
            "pool_id": "p1",
            "gpu_id": "g0",
            "model_ref": "llama",
            "reason": "cold_start",
        },
    ),
    (
        "an eviction names the worker",
        EvictWorker("w9", "p1", "lru"),
        {"action": "evict_worker", "worker_id": "w9", "pool_id": "p1", "reason": "lru"},
    ),
    (
        "a reject carries a stable code as a string",
        Reject("j2", ErrorCode.NO_CAPACITY, "too big"),
        {"action": "reject", "job_id": "j2", "code": "NO_CAPACITY", "message": "too big"},
    ),
    (
        "a batch holds its actions in order",
        Batch((Dispatch("j1", "w1", "p1"), Wait("x"))),
        {
            "action": "batch",
            "actions": [
                {"action": "dispatch", "job_id": "j1", "worker_id": "w1", "pool_id": "p1"},
                {"action": "wait", "reason": "x"},
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("decision", "expected"),
    [(d, e) for _, d, e in ROUND_TRIPS],
    ids=[name for name, _, _ in ROUND_TRIPS],
)
def test_decisions_convert_to_and_from_the_rhai_map(
    decision: Decision, expected: dict[str, Any]
) -> None:
    assert decision_to_dict(decision) == expected
    assert decision_from_dict(expected) == decision


def test_the_explanation_travels_with_the_dict_but_does_not_change_equality() -> None:
    a = Dispatch("j1", "w1", explanation={"placement": "least-loaded"})
    data = decision_to_dict(a)
    assert data["explanation"] == {"placement": "least-loaded"}
    back = decision_from_dict(data)
    assert back.explanation == {"placement": "least-loaded"}
    assert back == Dispatch("j1", "w1")
    assert "explanation" not in decision_to_dict(a, explanation=False)


def test_optional_fields_given_as_unit_are_absent() -> None:
    # Rhai's () arrives as None.
    d = decision_from_dict({"action": "wait", "reason": None, "retry_after_ms": None})
    assert d == Wait("", None)


def test_an_integral_float_retry_hint_is_accepted() -> None:
    assert decision_from_dict({"action": "wait", "retry_after_ms": 250.0}) == Wait("", 250)


def test_iter_actions_flattens_a_batch_and_wraps_a_single_action() -> None:
    d = Dispatch("j", "w")
    assert iter_actions(d) == (d,)
    assert iter_actions(Batch((d, Wait()))) == (d, Wait())


INVALID: list[tuple[str, Any, str]] = [
    ("a decision that is not a map is refused", [1, 2], "decision"),
    ("a missing action is refused", {"job_id": "j"}, "action"),
    ("an unknown action is refused", {"action": "run"}, "action"),
    ("a dispatch without a worker is refused", {"action": "dispatch", "job_id": "j"}, "worker_id"),
    (
        "a job id that is not a string is refused",
        {"action": "dispatch", "job_id": 7, "worker_id": "w"},
        "job_id",
    ),
    (
        "an empty worker id is refused",
        {"action": "dispatch", "job_id": "j", "worker_id": ""},
        "worker_id",
    ),
    (
        "an unknown field is refused, not ignored",
        {"action": "dispatch", "job_id": "j", "worker_id": "w", "worker": "w"},
        "worker",
    ),
    ("a reject without a code is refused", {"action": "reject", "job_id": "j"}, "code"),
    (
        "a reject with an unknown code is refused",
        {"action": "reject", "job_id": "j", "code": "OOPS"},
        "code",
    ),
    (
        "a negative retry hint is refused",
        {"action": "wait", "retry_after_ms": -1},
        "retry_after_ms",
    ),
    (
        "a boolean retry hint is refused",
        {"action": "wait", "retry_after_ms": True},
        "retry_after_ms",
    ),
    (
        "a start without a gpu is refused",
        {"action": "start_worker", "pool_id": "p", "model_ref": "m"},
        "gpu_id",
    ),
    ("a batch without actions is refused", {"action": "batch"}, "actions"),
    ("a batch whose actions are a map is refused", {"action": "batch", "actions": {}}, "actions"),
    (
        "a bad action inside a batch is named by its index",
        {"action": "batch", "actions": [{"action": "wait"}, {"action": "dispatch", "job_id": "j"}]},
        "actions[1].worker_id",
    ),
    (
        "a batch inside a batch is refused",
        {"action": "batch", "actions": [{"action": "batch", "actions": []}]},
        "actions[0].action",
    ),
    (
        "an explanation that is not a map is refused",
        {"action": "wait", "explanation": "because"},
        "explanation",
    ),
]


@pytest.mark.parametrize(
    ("data", "field"), [(d, f) for _, d, f in INVALID], ids=[n for n, _, _ in INVALID]
)
def test_invalid_decision_maps_raise_an_error_naming_the_field(data: Any, field: str) -> None:
    with pytest.raises(DecisionInvalid) as info:
        decision_from_dict(data)
    assert info.value.field == field
    assert str(info.value.message).startswith(f"{field}: ")
    assert info.value.code is ErrorCode.SCHEDULER_ERROR


def test_reject_accepts_a_code_string_and_refuses_an_unknown_one() -> None:
    assert Reject("j", "QUOTA_EXCEEDED").code is ErrorCode.QUOTA_EXCEEDED  # type: ignore[arg-type]
    with pytest.raises(DecisionInvalid):
        Reject("j", "NOPE")  # type: ignore[arg-type]


def test_decisions_are_immutable_and_hashable() -> None:
    d = Dispatch("j", "w")
    with pytest.raises(AttributeError):
        d.job_id = "x"  # type: ignore[misc]
    assert len({Dispatch("j", "w"), Dispatch("j", "w", explanation={"a": 1})}) == 1
