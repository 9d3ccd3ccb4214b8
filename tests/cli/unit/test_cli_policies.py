"""`llorch scheduler validate|dry-run`: offline, through orchestrator_core.rhai (the real Rhai
engine), no daemon involved."""

from __future__ import annotations

import json

import pytest
from llorch.exitcodes import ExitCode
from orchestrator_core.rhai import sample_snapshot_json

from tests.support.llorch_fake import invoke

GOOD = """
fn schedule(ctx) {
    log_info("queue has " + ctx.queue.len() + " jobs");
    platform_schedule(ctx)
}
"""

WAIT = """
fn schedule(ctx) {
    log_warn("holding everything");
    #{ action: "wait", reason: "maintenance", retry_after_ms: 500 }
}
"""

SYNTAX_ERROR = """
fn schedule(ctx) {
    let x = ;
}
"""

ENDLESS = """
fn schedule(ctx) {
    loop { }
}
"""

RULES = """
version: 1
default: platform
rules:
  - name: batch-waits
    priority: 10
    when: {priority: batch}
    action: wait
    reason: batch_later
"""

BAD_RULES = """
version: 1
rules:
  - name: oops
    when: {priority: batch}
"""


@pytest.fixture
def files(tmp_path):
    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    write("snapshot.json", sample_snapshot_json())
    return write, str(tmp_path / "snapshot.json")


def test_validate_a_good_policy(files):
    write, _ = files
    path = write("good.rhai", GOOD)
    result = invoke(None, "scheduler", "validate", path)
    assert result.exit_code == 0, result.stderr
    assert f"{path}: valid rhai policy" in result.stdout
    assert "dispatch " in result.stdout  # the decision on the sample snapshot
    parsed = json.loads(invoke(None, "scheduler", "validate", path, "--json").stdout)
    assert parsed["valid"] is True
    assert parsed["problems"] == []
    assert "schedule/1" in parsed["functions"]


def test_validate_reports_problems_with_line_and_column(files):
    write, _ = files
    path = write("bad.rhai", SYNTAX_ERROR)
    result = invoke(None, "scheduler", "validate", path)
    assert result.exit_code == ExitCode.USAGE
    assert f"{path}:3:" in result.stderr
    assert "syntax" in result.stderr
    assert "Traceback" not in result.output
    parsed = json.loads(invoke(None, "scheduler", "validate", path, "--json").stdout)
    assert parsed["valid"] is False
    assert parsed["diagnostics"][0]["line"] == 3


def test_validate_yaml_rules(files):
    write, _ = files
    result = invoke(None, "scheduler", "validate", write("rules.yaml", RULES), "--json")
    parsed = json.loads(result.stdout)
    assert result.exit_code == 0, parsed["problems"]
    assert parsed["kind"] == "rules"
    assert parsed["valid"] is True
    missing_action = invoke(None, "scheduler", "validate", write("oops.yaml", BAD_RULES))
    assert missing_action.exit_code == ExitCode.USAGE
    assert "oops.yaml:4:" in missing_action.stderr
    assert "rules[0].action: is required" in missing_action.stderr
    broken = invoke(None, "scheduler", "validate", write("broken.yaml", "rules: [1, 2"))
    assert broken.exit_code == ExitCode.USAGE
    assert "broken.yaml" in broken.stderr


def test_dry_run_prints_decision_logs_and_the_builtin_comparison(files):
    write, snapshot = files
    result = invoke(None, "scheduler", "dry-run", write("wait.rhai", WAIT), "--snapshot", snapshot)
    assert result.exit_code == 0, result.stderr
    assert "decision\twait (maintenance, retry after 500 ms)" in result.stdout
    assert "log warn: holding everything" in result.stdout
    assert "built-in policy\tdispatch " in result.stdout
    same = invoke(None, "scheduler", "dry-run", write("good.rhai", GOOD), "--snapshot", snapshot)
    assert "built-in policy\twould decide the same" in same.stdout
    assert "log info: queue has" in same.stdout


def test_dry_run_json_round_trips(files):
    write, snapshot = files
    args = ("scheduler", "dry-run", write("wait.rhai", WAIT), "--snapshot", snapshot, "--json")
    parsed = json.loads(invoke(None, *args).stdout)
    assert parsed["decision"]["action"] == "wait"
    assert parsed["logs"] == ["warn: holding everything"]
    assert parsed["fallback"] is None


def test_dry_run_of_a_runaway_policy_falls_back_and_says_so(files):
    write, snapshot = files
    result = invoke(
        None, "scheduler", "dry-run", write("loop.rhai", ENDLESS), "--snapshot", snapshot
    )
    assert result.exit_code == 0
    assert "the policy failed" in result.stderr
    assert "the built-in policy decided" in result.stderr


def test_dry_run_bad_inputs_exit_2(files, tmp_path):
    write, snapshot = files
    good = write("good.rhai", GOOD)
    bad_snapshot = write("bad.json", json.dumps({"format": 1}))
    result = invoke(None, "scheduler", "dry-run", good, "--snapshot", bad_snapshot)
    assert result.exit_code == ExitCode.USAGE
    assert "invalid snapshot" in result.stderr
    not_json = write("not.json", "{")
    assert "not valid JSON" in invoke(None, "scheduler", "dry-run", good, "--snapshot",
                                      not_json).stderr  # fmt: skip
    missing = invoke(None, "scheduler", "dry-run", good, "--snapshot", str(tmp_path / "no.json"))
    assert missing.exit_code == ExitCode.USAGE
    broken = invoke(None, "scheduler", "dry-run", write("bad.rhai", SYNTAX_ERROR), "--snapshot",
                    snapshot)  # fmt: skip
    assert broken.exit_code == ExitCode.USAGE
    assert "syntax" in broken.stderr
