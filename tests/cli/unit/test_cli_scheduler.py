"""`llorch scheduler show|validate|dry-run|apply` through CliRunner (fake daemon seam)."""

from __future__ import annotations

import json

import llorch.policies
import pytest
from llorch.exitcodes import ExitCode
from llorch.scheduler import describe_decision

from tests.support.llorch_fake import FakeOrchestratord, invoke

POLICY = """
fn schedule(ctx) {
    #{ action: "wait", reason: "testing" }
}
"""


@pytest.fixture
def fake() -> FakeOrchestratord:
    return FakeOrchestratord()


def test_show_prints_the_active_policy(fake):
    result = invoke(fake, "scheduler", "show")
    assert result.exit_code == 0
    assert "policy\tpriority" in result.stdout
    assert json.loads(invoke(fake, "scheduler", "show", "--json").stdout)["policy"] == "priority"


def test_apply_puts_the_script_and_reports(fake, tmp_path):
    policy = tmp_path / "wait.rhai"
    policy.write_text(POLICY, encoding="utf-8")
    result = invoke(fake, "scheduler", "apply", str(policy))
    assert result.exit_code == 0, result.stderr
    assert "applied (rhai policy active)" in result.stdout
    put = fake.requests[-1]
    assert put.method == "PUT"
    assert json.loads(put.content) == {"policy": "rhai", "script": POLICY}
    assert fake.scheduler["policy"] == "rhai"


def test_apply_a_policy_the_daemon_refuses_exits_2(fake, tmp_path):
    policy = tmp_path / "bad.rhai"
    policy.write_text("let x = 1;", encoding="utf-8")
    result = invoke(fake, "scheduler", "apply", str(policy))
    assert result.exit_code == ExitCode.USAGE
    assert "INVALID_REQUEST: script: no `schedule` function" in result.stderr


def test_apply_rejects_unknown_file_kinds_and_missing_files(fake, tmp_path):
    other = tmp_path / "policy.txt"
    other.write_text("x", encoding="utf-8")
    result = invoke(fake, "scheduler", "apply", str(other))
    assert result.exit_code == ExitCode.USAGE
    assert "expected a .rhai script or a .yaml/.yml rule file" in result.stderr
    missing = invoke(fake, "scheduler", "apply", str(tmp_path / "nope.rhai"))
    assert missing.exit_code == ExitCode.USAGE
    assert "cannot read policy" in missing.stderr
    assert fake.requests == []


def test_show_renders_the_activation_time_and_hides_empty_fields(fake):
    fake.scheduler = {"policy": "rhai", "placement": "least-loaded", "since": fake.now - 90,
                      "passes": 12, "script": None, "rules": None}  # fmt: skip
    result = invoke(fake, "scheduler", "show")
    assert "since\t2023-11-14 22:11:50 UTC (2m ago)" in result.stdout
    assert "passes\t12" in result.stdout
    assert "script" not in result.stdout


def test_without_the_policy_tools_validate_and_dry_run_say_so(fake, tmp_path, monkeypatch):
    """A build of orchestrator_core without its policy tools: a clear message, exit 8."""

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(llorch.policies.importlib, "import_module", missing)
    policy = tmp_path / "p.rhai"
    policy.write_text(POLICY, encoding="utf-8")
    snapshot = tmp_path / "s.json"
    snapshot.write_text("{}", encoding="utf-8")
    for args in (("validate", str(policy)), ("dry-run", str(policy), "--snapshot", str(snapshot))):
        result = invoke(fake, "scheduler", *args)
        assert result.exit_code == ExitCode.UNAVAILABLE
        assert "policy tools (orchestrator_core.rhai) are not available" in result.stderr
        assert "Traceback" not in result.output
    assert fake.requests == []


def test_describe_decision_reads_well():
    batch = {
        "action": "batch",
        "actions": [
            {"action": "dispatch", "job_id": "j1", "pool_id": "p", "worker_id": "w"},
            {"action": "start_worker", "pool_id": "p", "gpu_id": "0", "model_ref": "m"},
            {"action": "evict_worker", "worker_id": "w2", "reason": "lru"},
            {"action": "reject", "job_id": "j2", "code": "NO_CAPACITY", "message": "too big"},
            {"action": "wait", "reason": "busy", "retry_after_ms": 100},
        ],
    }
    assert describe_decision(batch) == [
        "dispatch j1 -> p/w",
        "start_worker m on p/0",
        "evict_worker w2 (lru)",
        "reject j2 NO_CAPACITY: too big",
        "wait (busy, retry after 100 ms)",
    ]
    assert describe_decision({"action": "wait"}) == ["wait (no reason)"]
