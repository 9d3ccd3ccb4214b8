"""RetryPolicy decides, the daemon acts: retry before the first token, fail after it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from orchestrator_core import ErrorCode
from orchestrator_core.retry import Fail, Retry, RetryPolicy

POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, multiplier=2.0, max_delay_s=3.0, jitter=0.0)


def test_a_fault_after_tokens_fails_the_job_with_worker_failed() -> None:
    got = POLICY.decide(attempts=1, tokens_relayed=4, code=ErrorCode.DISPATCH_FAILED, message="x")
    assert got == Fail(ErrorCode.WORKER_FAILED, "x")


def test_the_last_attempt_fails_with_its_own_code_and_the_count() -> None:
    got = POLICY.decide(attempts=3, tokens_relayed=0, code=ErrorCode.DISPATCH_FAILED, message="x")
    assert got == Fail(ErrorCode.DISPATCH_FAILED, "x (after 3 attempts)")


@pytest.mark.parametrize(("attempts", "delay"), [(1, 1.0), (2, 2.0)])
def test_earlier_attempts_are_retried_after_the_backoff(attempts: int, delay: float) -> None:
    got = POLICY.decide(
        attempts=attempts, tokens_relayed=0, code=ErrorCode.WORKER_FAILED, message="x"
    )
    assert got == Retry(delay)


@given(attempts=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_backoff_stays_within_the_cap_and_the_jitter(attempts: int, seed: int) -> None:
    policy = RetryPolicy(max_delay_s=10.0, jitter=0.2, rng=random.Random(seed))
    nominal = min(10.0, 1.0 * 2.0 ** (attempts - 1))
    assert nominal * 0.8 <= policy.backoff_s(attempts) <= nominal * 1.2
