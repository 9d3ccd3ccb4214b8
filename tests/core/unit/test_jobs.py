"""The job state machine (docs/design/http-api.md, *Job statuses*), case by case."""

from __future__ import annotations

import pytest
from orchestrator_core import (
    ErrorCode,
    IllegalTransition,
    Job,
    JobKind,
    JobParams,
    JobStatus,
    Priority,
    TaskSubmitRequest,
    prompt_sha256,
)

S = JobStatus
LEGAL = {
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.QUEUED, S.FAILED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.QUEUED),
}


def make_job(status: JobStatus = S.QUEUED) -> Job:
    return Job(
        job_id="job-1",
        model_ref="m",
        prompt="hello",
        params=JobParams(max_tokens=8),
        status=status,
    )


@pytest.mark.parametrize("source", list(S))
@pytest.mark.parametrize("target", list(S))
def test_every_move_is_allowed_exactly_when_the_spec_lists_it(
    source: JobStatus, target: JobStatus
) -> None:
    job = make_job(source)
    if (source, target) in LEGAL:
        job.transition(target, now=10.0)
        assert job.status is target
    else:
        with pytest.raises(IllegalTransition) as info:
            job.transition(target, now=10.0)
        assert info.value.code is ErrorCode.INVALID_STATE
        assert job.status is source  # an illegal move changes nothing


def test_terminal_states_are_exactly_completed_failed_cancelled() -> None:
    assert {s for s in S if s.is_terminal} == {S.COMPLETED, S.FAILED, S.CANCELLED}


def test_a_finished_job_keeps_only_the_prompt_hash() -> None:
    job = make_job()
    job.start(pool_id="p", worker_id="w", now=1.0)
    assert job.prompt == "hello"
    job.complete(now=2.0)
    assert job.prompt is None
    assert job.prompt_hash == prompt_sha256("hello")
    assert job.finished_at == 2.0


def test_starting_counts_an_attempt_and_a_retry_clears_the_assignment() -> None:
    job = make_job()
    job.start(pool_id="p", worker_id="w", now=1.0)
    assert (job.attempts, job.worker_id, job.started_at) == (1, "w", 1.0)
    job.requeue(now=2.0)
    assert (job.status, job.worker_id, job.pool_id, job.queued_at) == (S.QUEUED, None, None, 2.0)
    job.start(pool_id="p2", worker_id="w2", now=3.0)
    assert job.attempts == 2


def test_failing_records_the_stable_code() -> None:
    job = make_job(S.RUNNING)
    job.fail(ErrorCode.WORKER_FAILED, "worker died", now=5.0)
    assert (job.status, job.error_code, job.error_message) == (
        S.FAILED,
        ErrorCode.WORKER_FAILED,
        "worker died",
    )


def test_cancelling_a_cancelled_job_is_an_illegal_move() -> None:
    job = make_job()
    job.cancel(now=1.0)
    assert job.error_code is ErrorCode.CANCELLED
    with pytest.raises(IllegalTransition):
        job.cancel(now=2.0)


def test_a_job_from_a_request_carries_every_parameter() -> None:
    req = TaskSubmitRequest(
        model="llama",
        prompt="hi",
        max_tokens=5,
        temperature=0.1,
        top_p=0.5,
        top_k=3,
        repetition_penalty=1.2,
        stop=["\n"],
        seed=7,
        priority="batch",
        session_id="s-1",
    )
    job = Job.from_request(req, now=100.0, tenant_id="acme")
    assert job.job_id.startswith("job-") and len(job.job_id) == 36
    assert job.params == JobParams(5, 0.1, 0.5, 3, 1.2, ("\n",), 7)
    assert (job.priority, job.session_id, job.tenant_id) == (Priority.BATCH, "s-1", "acme")
    assert (job.status, job.created_at, job.queued_at) == (S.QUEUED, 100.0, 100.0)
    assert job.kind is JobKind.TASK


def test_params_round_trip_through_a_mapping_with_the_penalties() -> None:
    params = JobParams(4, stop=("x",), seed=1, presence_penalty=-0.5, frequency_penalty=1.5)
    data = params.to_dict()
    assert (data["presence_penalty"], data["frequency_penalty"]) == (-0.5, 1.5)
    assert JobParams.from_mapping(data) == params
    defaults = JobParams.from_mapping({"max_tokens": 4})
    assert (defaults.presence_penalty, defaults.frequency_penalty) == (0.0, 0.0)


def test_job_ids_are_unique() -> None:
    req = TaskSubmitRequest(model="m", prompt="p", max_tokens=1)
    ids = {Job.from_request(req, now=0).job_id for _ in range(1000)}
    assert len(ids) == 1000
