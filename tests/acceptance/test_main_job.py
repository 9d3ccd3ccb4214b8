"""``make run``'s script, examples/main_job.py, as a user runs it: orchestratord and a pool
agent (llama.cpp when importable, else the simulator) come up, one job streams its tokens,
everything stops, exit status 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def test_the_main_job_streams_a_job_and_exits_0() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "main_job.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert out.startswith("orchestratord: http://127.0.0.1:")
    assert "engine: " in out
    assert "--- first token after" in out
    assert '--- end: {"tokens": 48' in out
    assert "job completed: 48 tokens" in out
