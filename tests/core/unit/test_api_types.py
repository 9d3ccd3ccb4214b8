"""Request validation: every bad field gets its own stable code and a message naming it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from orchestrator_core import (
    ErrorCode,
    ErrorEnvelope,
    JobStatusResponse,
    OrchestratorError,
    QueueFull,
    RequestInvalid,
    TaskSubmitRequest,
    TaskSubmitResponse,
    WorkerSpawnRequest,
    http_status_for,
    json_schemas,
)
from orchestrator_core.api import SEED_MAX

VALID: dict[str, Any] = {"model": "llama-3-8b", "prompt": "Hello", "max_tokens": 16}

BAD_FIELDS = [
    (
        "model is required",
        {"model": None},
        "model",
        ErrorCode.INVALID_REQUEST,
        "model: is required",
    ),
    (
        "prompt is required",
        {"prompt": None},
        "prompt",
        ErrorCode.INVALID_REQUEST,
        "prompt: is required",
    ),
    (
        "max_tokens is required",
        {"max_tokens": None},
        "max_tokens",
        ErrorCode.INVALID_REQUEST,
        "max_tokens: is required",
    ),
    (
        "an empty prompt is refused",
        {"prompt": ""},
        "prompt",
        ErrorCode.INVALID_PARAMETER,
        "prompt: must not be empty",
    ),
    (
        "max_tokens below one is refused",
        {"max_tokens": 0},
        "max_tokens",
        ErrorCode.INVALID_PARAMETER,
        "max_tokens: must be between 1 and 1000000, got 0",
    ),
    (
        "temperature above two is refused",
        {"temperature": 2.5},
        "temperature",
        ErrorCode.INVALID_PARAMETER,
        "temperature: must be between 0.0 and 2.0, got 2.5",
    ),
    (
        "negative temperature is refused",
        {"temperature": -0.1},
        "temperature",
        ErrorCode.INVALID_PARAMETER,
        "temperature: must be between 0.0 and 2.0, got -0.1",
    ),
    (
        "top_p above one is refused",
        {"top_p": 1.01},
        "top_p",
        ErrorCode.INVALID_PARAMETER,
        "top_p: must be between 0.0 and 1.0, got 1.01",
    ),
    (
        "negative top_k is refused",
        {"top_k": -1},
        "top_k",
        ErrorCode.INVALID_PARAMETER,
        "top_k: must be between 0 and 1000000, got -1",
    ),
    (
        "repetition_penalty above two is refused",
        {"repetition_penalty": 3},
        "repetition_penalty",
        ErrorCode.INVALID_PARAMETER,
        "repetition_penalty: must be between 0.0 and 2.0, got 3",
    ),
    (
        "five stop strings are too many",
        {"stop": ["a", "b", "c", "d", "e"]},
        "stop",
        ErrorCode.INVALID_PARAMETER,
        "stop: at most 4 stop strings, got 5",
    ),
    (
        "a negative seed is refused",
        {"seed": -1},
        "seed",
        ErrorCode.INVALID_PARAMETER,
        f"seed: must be between 0 and {SEED_MAX}, got -1",
    ),
    (
        "a seed beyond 64 bits is refused",
        {"seed": 2**64},
        "seed",
        ErrorCode.INVALID_PARAMETER,
        f"seed: must be between 0 and {SEED_MAX}, got {2**64}",
    ),
    (
        "an unknown priority is refused",
        {"priority": "urgent"},
        "priority",
        ErrorCode.INVALID_PARAMETER,
        "priority: must be one of interactive or batch, got 'urgent'",
    ),
    (
        "a string where a number belongs is refused",
        {"max_tokens": "10"},
        "max_tokens",
        ErrorCode.INVALID_PARAMETER,
        "max_tokens: must be an integer, got '10'",
    ),
    (
        "a boolean is not an integer",
        {"top_k": True},
        "top_k",
        ErrorCode.INVALID_PARAMETER,
        "top_k: must be an integer, got True",
    ),
    (
        "an unknown field is refused",
        {"temprature": 1.0},
        "temprature",
        ErrorCode.INVALID_REQUEST,
        "temprature: unknown field",
    ),
    (
        "a timeout beyond 30 minutes is refused",
        {"timeout_s": 1801},
        "timeout_s",
        ErrorCode.INVALID_PARAMETER,
        "timeout_s: must be between 0 and 1800, got 1801",
    ),
]


def body(**changes: Any) -> dict[str, Any]:
    data = {**VALID, **changes}
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(
    ("case", "changes", "field", "code", "message"), BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS]
)
def test_bad_field(
    case: str, changes: dict[str, Any], field: str, code: ErrorCode, message: str
) -> None:
    with pytest.raises(RequestInvalid) as info:
        TaskSubmitRequest.parse(body(**changes))
    err = info.value
    assert [(e.field, e.code, e.message) for e in err.errors] == [(field, code, message)]
    assert err.code is code
    assert err.http_status == 400
    assert err.details["fields"][0]["field"] == field


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(RequestInvalid) as info:
        TaskSubmitRequest.parse(body(temperature=9, top_p=2, seed=-5))
    assert {e.field for e in info.value.errors} == {"temperature", "top_p", "seed"}


def test_construction_and_validate_raise_the_same_error_as_parse() -> None:
    with pytest.raises(RequestInvalid) as built:
        TaskSubmitRequest(model="m", prompt="p", max_tokens=1, temperature=5.0)
    req = TaskSubmitRequest(model="m", prompt="p", max_tokens=1)
    req.temperature = 5.0  # assignment is not validated; validate() catches it
    with pytest.raises(RequestInvalid) as validated:
        req.validate()
    assert built.value.errors == validated.value.errors


def test_a_valid_request_gets_the_documented_defaults() -> None:
    req = TaskSubmitRequest.parse(VALID).validate()
    assert (req.temperature, req.top_p, req.top_k, req.repetition_penalty) == (0.7, 1.0, 0, 1.0)
    assert (req.stop, req.seed, req.priority, req.session_id) == ([], None, "interactive", None)


def test_the_largest_unsigned_64_bit_seed_is_accepted() -> None:
    assert TaskSubmitRequest.parse(body(seed=SEED_MAX)).seed == SEED_MAX


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "body: malformed JSON"),
        (b"[1, 2]", "body: must be a JSON object"),
        ('"text"', "body: must be a JSON object"),
    ],
)
def test_malformed_bodies_are_invalid_requests(raw: bytes | str, message: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        TaskSubmitRequest.parse(raw)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.errors[0].message.startswith(message)


def test_json_text_is_parsed_like_a_mapping() -> None:
    assert TaskSubmitRequest.parse('{"model": "m", "prompt": "p", "max_tokens": 3}').max_tokens == 3


def test_session_ids_are_restricted_to_safe_characters() -> None:
    with pytest.raises(RequestInvalid) as info:
        TaskSubmitRequest.parse(body(session_id="a b"))
    assert info.value.errors[0].field == "session_id"


@given(
    temperature=st.floats(allow_nan=False, allow_infinity=False),
    top_p=st.floats(allow_nan=False, allow_infinity=False),
    top_k=st.integers(min_value=-(2**70), max_value=2**70),
)
def test_range_checks_accept_exactly_the_documented_ranges(
    temperature: float, top_p: float, top_k: int
) -> None:
    ok = 0 <= temperature <= 2 and 0 <= top_p <= 1 and 0 <= top_k <= 1_000_000
    try:
        TaskSubmitRequest.parse(body(temperature=temperature, top_p=top_p, top_k=top_k))
    except RequestInvalid as exc:
        assert not ok
        assert all(e.code is ErrorCode.INVALID_PARAMETER for e in exc.errors)
    else:
        assert ok


def test_worker_spawn_request_validates_its_fields() -> None:
    assert WorkerSpawnRequest(model_ref="m", pool_id="p", gpu_id="0").gpu_id == "0"
    with pytest.raises(RequestInvalid) as info:
        WorkerSpawnRequest.parse({"model_ref": "", "pool_id": "p"})
    assert {e.field for e in info.value.errors} == {"model_ref", "gpu_id"}


def test_responses_round_trip_through_json() -> None:
    resp = TaskSubmitResponse(job_id="job-1", queue_position=3, events_url="/v2/tasks/job-1/events")
    assert TaskSubmitResponse.parse(resp.model_dump_json()) == resp
    status = JobStatusResponse(
        job_id="job-1",
        status="failed",
        model="m",
        priority="batch",
        created_at=1.0,
        prompt_hash="ab",
        error={"code": "WORKER_FAILED", "message": "died"},  # type: ignore[arg-type]
    )
    assert status.is_terminal and status.error is not None
    assert JobStatusResponse.parse(status.model_dump_json()) == status


# -- error envelope and the code table -------------------------------------------------------

STATUS_TABLE = {
    "INVALID_REQUEST": 400,
    "INVALID_PARAMETER": 400,
    "PAYLOAD_TOO_LARGE": 413,
    "ROUTE_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "JOB_NOT_FOUND": 404,
    "POOL_NOT_FOUND": 404,
    "MODEL_NOT_FOUND": 404,
    "POOL_CONFLICT": 409,
    "INVALID_STATE": 409,
    "CONTEXT_TOO_LARGE": 400,
    "QUEUE_FULL": 429,
    "QUOTA_EXCEEDED": 429,
    "NO_CAPACITY": 503,
    "POOL_UNAVAILABLE": 503,
    "INSUFFICIENT_VRAM": 409,
    "MODEL_INCOMPATIBLE": 409,
    "DISPATCH_FAILED": 502,
    "WORKER_FAILED": 502,
    "DEADLINE_EXCEEDED": 504,
    "SCHEDULER_ERROR": 500,
    "INTERNAL": 500,
    "NOT_LEADER": 503,
    "STORE_UNAVAILABLE": 503,
}


@pytest.mark.parametrize(("code", "status"), sorted(STATUS_TABLE.items()))
def test_each_code_maps_to_the_status_of_system_md(code: str, status: int) -> None:
    assert ErrorCode(code).http_status == status
    assert http_status_for(code) == status


def test_cancelled_has_no_http_status_and_unknown_codes_are_500() -> None:
    assert ErrorCode.CANCELLED.http_status is None
    assert http_status_for("NOT_A_CODE") == 500


def test_every_code_is_upper_snake_and_in_the_table() -> None:
    assert {c.value for c in ErrorCode} == set(STATUS_TABLE) | {"CANCELLED", "WORKER_NOT_FOUND"}
    assert all(c.value.isupper() and " " not in c.value for c in ErrorCode)


def test_an_error_renders_the_envelope_with_the_correlation_id() -> None:
    env = QueueFull(100, retry_after_s=2).to_envelope("abc-123")
    parsed = ErrorEnvelope.parse(env)
    assert parsed.error.code == "QUEUE_FULL"
    assert parsed.error.correlation_id == "abc-123"
    assert parsed.error.details == {"capacity": 100, "retry_after_s": 2}
    assert str(OrchestratorError("boom")) == "INTERNAL: boom"


def test_json_schemas_are_exported_for_every_api_type() -> None:
    schemas = json_schemas()
    assert set(schemas) >= {
        "TaskSubmitRequest",
        "TaskSubmitResponse",
        "JobStatusResponse",
        "WorkerSpawnRequest",
        "ErrorEnvelope",
    }
    submit = schemas["TaskSubmitRequest"]
    assert set(submit["required"]) == {"model", "prompt", "max_tokens"}
    assert submit["properties"]["temperature"]["maximum"] == 2.0
    assert submit["properties"]["stop"]["maxItems"] == 4
    assert submit["additionalProperties"] is False
