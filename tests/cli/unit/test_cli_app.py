"""The `llorch` command as a whole: help, version, exit codes, errors without tracebacks, an
unreachable daemon (a real closed port), output modes and shell completion."""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import llorch
import pytest
from llorch.exitcodes import ExitCode, exit_code_for_error, exit_codes_help
from llorch.output import Output
from orchestrator_core import ErrorCode

from tests.support.llorch_fake import FakeOrchestratord, invoke


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- help and version -------------------------------------------------------------------------


def test_root_help_lists_domains_settings_and_every_exit_code():
    result = invoke(None, "--help")
    assert result.exit_code == 0
    text = result.stdout
    for word in ("jobs", "pools", "scheduler", "config", "LLORCH_URL", "--json"):
        assert word in text
    for code in ExitCode:
        assert f"{int(code)} " in text
    assert "cannot reach orchestratord" in text


def test_the_readme_lists_every_exit_code():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    paragraph = readme.split("\nExit codes: ", 1)[1].split("\n\n", 1)[0]
    listed = {int(n) for n in re.findall(r"(?:^|, )(\d+) ", paragraph)}
    assert listed == {int(code) for code in ExitCode}


@pytest.mark.parametrize(
    "args",
    [
        ("jobs",), ("jobs", "submit"), ("jobs", "watch"), ("jobs", "status"), ("jobs", "list"),
        ("jobs", "cancel"), ("pools",), ("pools", "list"), ("pools", "show"), ("scheduler",),
        ("scheduler", "show"), ("scheduler", "validate"), ("scheduler", "dry-run"),
        ("scheduler", "apply"), ("config",), ("config", "validate"), ("config", "show"),
    ],
)  # fmt: skip
def test_every_command_has_help_with_json(args):
    result = invoke(None, *args, "--help")
    assert result.exit_code == 0
    assert "Usage: llorch " + " ".join(args) in " ".join(result.stdout.split())
    if len(args) == 2:
        assert "--json" in result.stdout


def test_version():
    result = invoke(None, "--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("llorch 0.")


def test_usage_errors_exit_2():
    assert invoke(None, "jobs", "frobnicate").exit_code == ExitCode.USAGE
    assert invoke(None, "jobs", "submit", "-p", "x").exit_code == ExitCode.USAGE  # no --model
    assert invoke(None, "jobs", "list", "--limit", "0").exit_code == ExitCode.USAGE


# -- exit codes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (ErrorCode.INVALID_PARAMETER, ExitCode.USAGE),
        (ErrorCode.CONTEXT_TOO_LARGE, ExitCode.USAGE),
        (ErrorCode.UNAUTHORIZED, ExitCode.AUTH),
        (ErrorCode.FORBIDDEN, ExitCode.AUTH),
        (ErrorCode.JOB_NOT_FOUND, ExitCode.NOT_FOUND),
        (ErrorCode.MODEL_NOT_FOUND, ExitCode.NOT_FOUND),
        (ErrorCode.QUEUE_FULL, ExitCode.REFUSED),
        (ErrorCode.NO_CAPACITY, ExitCode.REFUSED),
        (ErrorCode.POOL_CONFLICT, ExitCode.REFUSED),
        (ErrorCode.DISPATCH_FAILED, ExitCode.SERVER_ERROR),
        (ErrorCode.DEADLINE_EXCEEDED, ExitCode.SERVER_ERROR),
        (ErrorCode.INTERNAL, ExitCode.SERVER_ERROR),
        (ErrorCode.CANCELLED, ExitCode.JOB_FAILED),
    ],
)
def test_error_codes_map_to_exit_codes_through_the_core_table(code, expected):
    assert exit_code_for_error(code) == expected


def test_every_error_code_has_an_exit_code_and_unknown_codes_use_the_status():
    for code in ErrorCode:
        assert exit_code_for_error(code) in set(ExitCode)
    assert exit_code_for_error("SOMETHING_NEW", 404) == ExitCode.NOT_FOUND
    assert exit_code_for_error("SOMETHING_NEW", 503) == ExitCode.REFUSED
    assert exit_code_for_error("SOMETHING_NEW") == ExitCode.SERVER_ERROR
    assert exit_codes_help().count("\n") >= len(ExitCode)


# -- the daemon is unreachable or misbehaves --------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "submit", "-m", "m", "-p", "hi"),
        ("jobs", "watch", "job-1"),
        ("jobs", "status", "job-1"),
        ("jobs", "list"),
        ("jobs", "cancel", "job-1"),
        ("pools", "list"),
        ("pools", "show", "p"),
        ("scheduler", "show"),
    ],
)
def test_an_unreachable_daemon_gives_one_clear_line_and_exit_3(args):
    url = f"http://127.0.0.1:{_closed_port()}"
    result = invoke(None, "--url", url, *args)
    assert result.exit_code == ExitCode.UNREACHABLE
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cannot reach orchestratord at {url} (connection refused)" in result.stderr
    assert "Traceback" not in result.output


def test_unreachable_with_json_prints_a_parseable_error():
    url = f"http://127.0.0.1:{_closed_port()}"
    result = invoke(None, "--url", url, "jobs", "list", "--json")
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "DAEMON_UNREACHABLE"
    assert error["exit_code"] == ExitCode.UNREACHABLE


def test_the_real_console_script_never_shows_a_traceback():
    """Through a real process: the installed entry point, a closed port."""
    url = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    proc = subprocess.run(
        [sys.executable, "-m", "llorch", "--url", url, "pools", "list"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == ExitCode.UNREACHABLE
    assert proc.stderr.startswith("llorch: error: cannot reach orchestratord")
    assert "Traceback" not in proc.stderr


def test_a_server_error_without_an_envelope_exits_5():
    fake = FakeOrchestratord()
    fake.handle = lambda request: httpx.Response(502, text="<html>Bad Gateway</html>")
    result = invoke(fake, "jobs", "list")
    assert result.exit_code == ExitCode.SERVER_ERROR
    assert "HTTP_502: Bad Gateway" in result.stderr


def test_a_non_json_success_reply_exits_5():
    fake = FakeOrchestratord()
    fake.handle = lambda request: httpx.Response(200, text="hello")
    result = invoke(fake, "pools", "list")
    assert result.exit_code == ExitCode.SERVER_ERROR
    assert "not JSON" in result.stderr


def test_a_bug_in_llorch_is_one_line_not_a_traceback():
    fake = FakeOrchestratord()

    def boom(request):
        raise ZeroDivisionError("division by zero")

    fake.handle = boom
    result = invoke(fake, "pools", "list")
    assert result.exit_code == ExitCode.SERVER_ERROR
    assert "internal error in llorch: ZeroDivisionError" in result.stderr
    assert "Traceback" not in result.output


# -- output modes -----------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tables_and_colour_only_on_a_terminal_without_no_color():
    rows = [["job-1", "running"]]
    tty = _Tty()
    Output(json_mode=False, env={}, stdout=tty, stderr=io.StringIO()).table(["a", "b"], rows)
    assert "\t" not in tty.getvalue(), "an aligned table, not tab-separated"
    assert "job-1  running" in tty.getvalue().replace("\x1b[0m", "")
    assert "\x1b[" in tty.getvalue()
    plain_tty = _Tty()
    out = Output(json_mode=False, env={"NO_COLOR": "1"}, stdout=plain_tty, stderr=io.StringIO())
    out.table(["a", "b"], rows)
    assert "\x1b[" not in plain_tty.getvalue()
    assert "job-1" in plain_tty.getvalue()
    piped = io.StringIO()
    Output(json_mode=False, env={}, stdout=piped, stderr=io.StringIO()).table(["a", "b"], rows)
    assert piped.getvalue() == "A\tB\njob-1\trunning\n"


def test_json_output_is_never_coloured():
    tty = _Tty()
    Output(json_mode=True, env={}, stdout=tty, stderr=io.StringIO()).json({"a": [1]})
    assert json.loads(tty.getvalue()) == {"a": [1]}
    assert "\x1b[" not in tty.getvalue()


def test_global_json_flag_works_for_any_command():
    fake = FakeOrchestratord()
    fake.add_pool()
    parsed = json.loads(invoke(fake, "--json", "pools", "list").stdout)
    assert parsed["pools"][0]["pool_id"] == "pool-a"


# -- shell completion -------------------------------------------------------------------------


def test_shell_completion_script_and_completions():
    script = invoke(None, "--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert script.exit_code == 0
    assert "_llorch_completion" in script.stdout
    env = {"_LLORCH_COMPLETE": "complete_bash", "COMP_WORDS": "llorch jobs submit --priority ",
           "COMP_CWORD": "4"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", "from llorch.app import app; app(prog_name='llorch')"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False,
    )  # fmt: skip
    assert proc.stdout.split() == ["interactive", "batch"]


# -- public API -------------------------------------------------------------------------------


def test_llorch_all_is_sorted_and_every_public_name_is_documented():
    assert llorch.__all__ == sorted(llorch.__all__)
    missing: list[str] = []
    modules = ["llorch"] + [
        info.name for info in pkgutil.walk_packages(llorch.__path__, "llorch.")
        if info.name != "llorch.__main__"
    ]  # fmt: skip
    for mod_name in modules:
        module = importlib.import_module(mod_name)
        if not (module.__doc__ or "").strip():
            missing.append(mod_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
                missing.append(f"{mod_name}.{name}")
            if inspect.isclass(obj) and obj.__module__ == mod_name:
                for attr, member in vars(obj).items():
                    public = inspect.isfunction(member) and not attr.startswith("_")
                    if public and not (member.__doc__ or "").strip():
                        missing.append(f"{mod_name}.{name}.{attr}")
    assert missing == []
