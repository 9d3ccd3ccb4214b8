"""Property: no sequence of moves ever leaves a terminal state or skips the rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from orchestrator_core import IllegalTransition, Job, JobParams, JobStatus


@given(st.lists(st.sampled_from(list(JobStatus)), max_size=30))
def test_no_path_leaves_a_terminal_state(moves: list[JobStatus]) -> None:
    job = Job(job_id="j", model_ref="m", prompt="p", params=JobParams(max_tokens=1))
    terminal_seen: JobStatus | None = None
    for target in moves:
        before = job.status
        try:
            job.transition(target, now=1.0)
        except IllegalTransition:
            assert job.status is before
            assert not before.can_move_to(target)
            continue
        assert terminal_seen is None, f"moved out of terminal {terminal_seen}"
        assert before.can_move_to(target)
        if job.status.is_terminal:
            terminal_seen = job.status
    if terminal_seen is not None:
        assert job.status is terminal_seen
        assert job.prompt is None
