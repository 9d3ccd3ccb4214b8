"""`llorch config validate|show` and client-settings precedence (file < env < flags)."""

from __future__ import annotations

import json

import pytest
from llorch.exitcodes import ExitCode
from llorch.settings import DEFAULT_URL, default_config_path, resolve_settings, token_fingerprint

from tests.support.llorch_fake import FakeOrchestratord, invoke

BROKEN = """
mode = "lab"
[queue]
capacity = 0
full_policy = "shuffle"
[scheduler]
budget_ms = 5000
colour = "blue"
"""


# -- config validate (offline) ----------------------------------------------------------------


def test_validate_a_good_config(tmp_path):
    path = tmp_path / "orchestrator.toml"
    path.write_text("[queue]\ncapacity = 500\n[server]\nport = 9000\n", encoding="utf-8")
    result = invoke(None, "config", "validate", str(path))
    assert result.exit_code == 0
    assert "valid (mode home, listen 127.0.0.1:9000, policy priority, 0 models)" in result.stdout
    parsed = json.loads(invoke(None, "config", "validate", str(path), "--json").stdout)
    assert parsed["valid"] is True
    assert parsed["config"]["queue"]["capacity"] == 500


def test_validate_prints_every_problem_with_its_key_path(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BROKEN, encoding="utf-8")
    result = invoke(None, "config", "validate", str(path))
    assert result.exit_code == ExitCode.USAGE
    err = result.stderr
    for expected in (
        "queue.capacity: must be -1 or >= 1, got 0",
        "queue.full_policy: must be one of",
        "scheduler.budget_ms: must be between 1 and 1000, got 5000",
        "scheduler.colour: unknown key",
    ):
        assert f"{path}: {expected}" in err, expected
    parsed = json.loads(invoke(None, "config", "validate", str(path), "--json").stdout)
    assert parsed["valid"] is False
    assert len(parsed["problems"]) >= 4
    assert "Traceback" not in result.output


def test_validate_reports_malformed_toml_and_missing_files(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[queue\ncapacity = 1\n", encoding="utf-8")
    result = invoke(None, "config", "validate", str(path))
    assert result.exit_code == ExitCode.USAGE
    assert "malformed TOML" in result.stderr
    missing = invoke(None, "config", "validate", str(tmp_path / "nope.toml"))
    assert missing.exit_code == ExitCode.USAGE
    assert "cannot read config file" in missing.stderr


def test_validate_applies_environment_overrides_only_when_asked(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("", encoding="utf-8")
    env = {"ORCHESTRATORD_QUEUE__CAPACITY": "0"}
    assert invoke(None, "config", "validate", str(path), env=env).exit_code == 0
    result = invoke(None, "config", "validate", str(path), "--with-env", env=env)
    assert result.exit_code == ExitCode.USAGE
    assert "queue.capacity: must be -1 or >= 1, got 0" in result.stderr


def test_validate_works_offline_even_with_a_broken_client_config():
    result = invoke(None, "config", "validate", "/nonexistent.toml", env={"LLORCH_URL": "nope"})
    assert "cannot read config file" in result.stderr  # not a complaint about LLORCH_URL


# -- client settings --------------------------------------------------------------------------


def test_settings_precedence_default_file_env_flag(tmp_path):
    cfg = tmp_path / "llorch" / "config.toml"
    cfg.parent.mkdir()
    cfg.write_text('url = "http://file:1"\ntoken = "file-token"\ntimeout = 3\n', encoding="utf-8")
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    s = resolve_settings({}, env)
    assert (s.base_url, s.url.source) == ("http://file:1", f"file {cfg}")
    assert s.token_value == "file-token"
    assert s.timeout_s == 3.0
    s = resolve_settings({}, {**env, "LLORCH_URL": "http://env:2/", "LLORCH_TOKEN": "env-token"})
    assert (s.base_url, s.url.source) == ("http://env:2", "env LLORCH_URL")
    assert (s.token_value, s.token.source) == ("env-token", "env LLORCH_TOKEN")
    assert s.timeout.source == f"file {cfg}"
    s = resolve_settings(
        {"url": "https://flag:3", "token": None}, {**env, "LLORCH_URL": "http://e:2"}
    )
    assert (s.base_url, s.url.source) == ("https://flag:3", "flag --url")
    assert resolve_settings({}, {}).base_url == DEFAULT_URL


def test_default_config_path_respects_xdg(tmp_path):
    assert default_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "llorch" / "config.toml"
    )
    assert default_config_path({}).parts[-3:] == (".config", "llorch", "config.toml")
    assert default_config_path({"XDG_CONFIG_HOME": "relative"}).parts[-3:] == (
        ".config", "llorch", "config.toml",
    )  # fmt: skip


def test_config_show_lists_each_setting_and_its_source(tmp_path):
    cfg = tmp_path / "llorch" / "config.toml"
    cfg.parent.mkdir()
    cfg.write_text('url = "http://file:1"\n', encoding="utf-8")
    env = {"XDG_CONFIG_HOME": str(tmp_path), "LLORCH_TOKEN": "s3cret-token"}
    result = invoke(None, "--timeout", "4", "config", "show", env=env)
    assert result.exit_code == 0
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in result.stdout.splitlines()[1:]}
    assert rows["url"] == ["http://file:1", f"file {cfg}"]
    assert rows["token"] == [token_fingerprint("s3cret-token"), "env LLORCH_TOKEN"]
    assert rows["timeout"] == ["4.0", "flag --timeout"]
    assert "s3cret-token" not in result.output, "the token itself is never printed"
    parsed = json.loads(invoke(None, "config", "show", "--json", env=env).stdout)
    assert parsed["url"] == {"value": "http://file:1", "source": f"file {cfg}"}
    assert parsed["config_file"]["source"] == "found"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"LLORCH_URL": "localhost:8080"}, "url (env LLORCH_URL): must look like http://"),
        (("--url", "ftp://x"), {}, "url (flag --url): must look like http://"),
        (("--url", "http://x:99999"), {}, "bad port"),
        ((), {"LLORCH_TIMEOUT": "soon"}, "timeout (env LLORCH_TIMEOUT): must be a number"),
        (("--timeout", "-1"), {}, "timeout (flag --timeout): must be between 0 and 3600"),
    ],
)
def test_bad_settings_exit_2_naming_value_and_source(args, env, message):
    result = invoke(FakeOrchestratord(), *args, "config", "show", env=env)
    assert result.exit_code == ExitCode.USAGE
    assert message in result.stderr


def test_bad_config_file_is_reported_with_its_path(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('url = "http://x:1"\ncolour = "red"\n', encoding="utf-8")
    result = invoke(None, "--config", str(cfg), "config", "show")
    assert result.exit_code == ExitCode.USAGE
    assert f"{cfg}: unknown key colour" in result.stderr
    missing = invoke(None, "--config", str(tmp_path / "none.toml"), "config", "show")
    assert missing.exit_code == ExitCode.USAGE
    assert "config file not found" in missing.stderr


def test_the_token_is_sent_as_a_bearer_header():
    fake = FakeOrchestratord()
    fake.auth_token = "tok-123"
    assert invoke(fake, "--token", "tok-123", "pools", "list").exit_code == 0
    assert fake.requests[-1].headers["Authorization"] == "Bearer tok-123"
    result = invoke(fake, "pools", "list", env={"LLORCH_TOKEN": "wrong"})
    assert result.exit_code == ExitCode.AUTH
    assert "UNAUTHORIZED" in result.stderr
