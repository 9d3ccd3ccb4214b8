"""Pieces of the daemon on their own: flags and config, auth, retry backoff, the token
estimate, the SSE parser and stream, the example configurations, the public API."""

from __future__ import annotations

import asyncio
import inspect
import random
from pathlib import Path

import orchestratord
import pytest
from orchestrator_core import ConfigInvalid, ErrorCode, OrchestratorError, load_config
from orchestrator_core.sse import SseDecoder
from orchestratord import (
    MemoryStore,
    Orchestrator,
    PostgresStore,
    build_config,
    default_store,
    estimate_prompt_tokens,
)
from orchestratord.auth import Authenticator
from orchestratord.cli import main
from orchestratord.store import StoredEvent
from orchestratord.streams import JobStream, format_sse
from orchestratord.testing import RecordingPoolAgentClient, ScriptedWorkerClient, make_config

ROOT = Path(__file__).resolve().parents[3]


# -- configuration and flags -------------------------------------------------------------------


def test_flags_override_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[server]\nport = 9000\n[persistence]\ndata_dir = '/nope'\n")
    env = {"ORCHESTRATORD_SERVER__PORT": "9100"}
    assert build_config(str(f), environ=env).server.port == 9100
    c = build_config(str(f), port=9200, data_dir="/tmp/true", host="localhost", environ=env)
    assert (c.server.port, c.server.host) == (9200, "localhost")
    assert c.persistence.data_dir == "/tmp/true"  # a path that looks like a TOML literal


def test_defaults_without_a_file() -> None:
    c = build_config(None, environ={})
    assert (c.mode, c.server.host, c.server.port) == ("home", "127.0.0.1", 8080)
    assert c.persistence.backend == "sqlite"


def test_home_mode_refuses_a_network_bind_from_flags() -> None:
    with pytest.raises(ConfigInvalid) as err:
        build_config(None, host="0.0.0.0", environ={})
    assert any(
        p.startswith("server.host: home mode binds loopback only") for p in err.value.problems
    )


def test_main_reports_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[queue]\ncapacity = 0\n[retry]\nmax_attempts = 0\n")
    assert main(["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "queue.capacity: must be -1 or >= 1, got 0" in err
    assert "retry.max_attempts: must be between 1 and 100, got 0" in err
    assert "Traceback" not in err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_postgres_backend_needs_a_dsn_and_gets_a_postgres_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "pg.toml"
    f.write_text("[persistence]\nbackend = 'postgres'\n")
    assert main(["--config", str(f)]) == 2
    assert "persistence.postgres_dsn: required" in capsys.readouterr().err
    f.write_text("[persistence]\nbackend = 'postgres'\npostgres_dsn = 'postgresql://h/db'\n")
    store = default_store(load_config(f, env={}))
    assert isinstance(store, PostgresStore) and store.dsn == "postgresql://h/db"


@pytest.mark.parametrize("name", ["lab.toml", "platform.toml"])
def test_example_configurations_are_valid(name: str) -> None:
    config = load_config(ROOT / "examples" / "config" / name, env={})
    assert config.mode in ("lab", "platform") and config.auth.clients


# -- auth --------------------------------------------------------------------------------------

CLIENT, TENANT, POOL = "c" * 20, "t" * 20, "p" * 20


def lab_auth() -> Authenticator:
    return Authenticator(
        make_config(
            mode="lab",
            auth={
                "clients": [{"token": CLIENT}, {"token": TENANT, "tenant": "acme"}],
                "pool_tokens": [POOL],
            },
        )
    )


def test_home_mode_needs_no_token() -> None:
    who = Authenticator(make_config()).authenticate(None, "client")
    assert who.kind == "anonymous" and who.operator


@pytest.mark.parametrize(
    ("header", "role", "code"),
    [
        (None, "client", ErrorCode.UNAUTHORIZED),
        ("Basic abc", "client", ErrorCode.UNAUTHORIZED),
        ("Bearer ", "client", ErrorCode.UNAUTHORIZED),
        (f"Bearer {CLIENT}x", "client", ErrorCode.UNAUTHORIZED),
        (f"Bearer {POOL}", "client", ErrorCode.FORBIDDEN),
        (f"Bearer {CLIENT}", "pool", ErrorCode.FORBIDDEN),
    ],
)
def test_lab_mode_refusals(header: str | None, role: str, code: ErrorCode) -> None:
    with pytest.raises(OrchestratorError) as err:
        lab_auth().authenticate(header, role)  # type: ignore[arg-type]
    assert err.value.code is code
    assert CLIENT not in err.value.message and POOL not in err.value.message


def test_lab_mode_principals() -> None:
    auth = lab_auth()
    op = auth.authenticate(f"Bearer {CLIENT}", "client")
    assert op.kind == "client" and op.operator and op.fingerprint.startswith("sha256:")
    tenant = auth.authenticate(f"bearer {TENANT}", "any")
    assert tenant.tenant == "acme" and not tenant.operator
    pool = auth.authenticate(f"Bearer {POOL}", "pool")
    assert pool.kind == "pool" and pool.fingerprint != op.fingerprint


# -- runtime pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("abcd", 1), ("abcde", 2), ("é" * 4, 2)])
def test_prompt_token_estimate_is_utf8_bytes_over_4(text: str, tokens: int) -> None:
    assert estimate_prompt_tokens(text) == tokens


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    config = make_config(
        retry={"base_delay_s": 1.0, "multiplier": 2.0, "max_delay_s": 10.0, "jitter": 0.2}
    )
    orch = Orchestrator(
        config,
        store=MemoryStore(),
        worker_client=ScriptedWorkerClient(),
        pool_client=RecordingPoolAgentClient(),
        rng=random.Random(4),
    )
    for attempt, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        delays = [orch.ctx.retry.backoff_s(attempt) for _ in range(200)]
        assert all(nominal * 0.8 <= d <= nominal * 1.2 for d in delays)
        assert max(delays) - min(delays) > nominal * 0.2  # the jitter is really there


# -- SSE ---------------------------------------------------------------------------------------


def test_sse_parser_handles_comments_multiline_data_and_blank_runs() -> None:
    decoder = SseDecoder()
    lines = [": hi", "", "event: token", 'data: {"a":', "data: 1}", "", "", "data: x", ""]
    out = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert [(e.event, e.data) for e in out] == [("token", '{"a":\n1}'), ("message", "x")]


def ev(i: int, kind: str = "token") -> StoredEvent:
    return StoredEvent("j", i, kind, "{}")


def test_stream_refuses_gaps_and_anything_after_the_terminal_event() -> None:
    s = JobStream("j")
    s.publish(ev(1, "queued"))
    with pytest.raises(ValueError, match="expected 2"):
        s.publish(ev(3))
    s.publish(ev(2))
    s.publish(ev(3, "end"))
    with pytest.raises(ValueError, match="after the terminal"):
        s.publish(ev(4))
    assert [e.event_id for e in s.after(1)] == [2, 3]
    assert format_sse(ev(2)) == b"id: 2\nevent: token\ndata: {}\n\n"


def test_follow_resumes_after_an_id_waits_for_more_and_ends_at_the_terminal() -> None:
    async def scenario() -> list[int | None]:
        s = JobStream("j", [ev(1, "queued"), ev(2)])
        got: list[int | None] = []

        async def reader() -> None:
            async for e in s.follow(1, idle_s=0.05):
                got.append(None if e is None else e.event_id)

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.08)  # idle: a keepalive (None)
        s.publish(ev(3))
        s.publish(ev(4, "error"))
        await asyncio.wait_for(task, 1)
        return got

    got = asyncio.run(scenario())
    assert got[0] == 2 and None in got and got[-2:] == [3, 4]


# -- public API --------------------------------------------------------------------------------


def test_public_api_is_sorted_importable_and_documented() -> None:
    names = orchestratord.__all__
    assert names == sorted(names)
    for name in names:
        obj = getattr(orchestratord, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name


def test_a_rhai_policy_file_from_the_configuration(tmp_path: Path) -> None:
    script = tmp_path / "policy.rhai"
    script.write_text("fn schedule(ctx) { platform_schedule(ctx) }\n")
    config = make_config(scheduler={"policy": "rhai", "script": str(script)})
    app = orchestratord.create_app(config, store=MemoryStore())
    assert app.state.orchestrator.scheduling.view().policy == "rhai"


def test_a_broken_rhai_policy_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "policy.rhai"
    script.write_text("fn schedule(ctx) { let = 1; }\n")
    f = tmp_path / "c.toml"
    f.write_text(f"[scheduler]\npolicy = 'rhai'\nscript = '{script}'\n")
    assert main(["--config", str(f), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "scheduler.script" in err and "Traceback" not in err
