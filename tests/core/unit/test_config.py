"""OrchestratorConfig: defaults, TOML parsing, environment overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestrator_core import ConfigInvalid, OrchestratorConfig, load_config
from orchestrator_core.scheduling import builtin_scheduler_from_config

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "config" / "orchestrator.toml"


def problems(text: str, **env: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        OrchestratorConfig.from_toml(text, env=env)
    return info.value.problems


def test_an_empty_file_gives_the_documented_defaults() -> None:
    cfg = OrchestratorConfig.from_toml("")
    assert cfg.mode == "home"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert (cfg.queue.capacity, cfg.queue.full_policy) == (100, "reject")
    assert (cfg.heartbeat.interval_s, cfg.heartbeat.missed_threshold) == (15.0, 3)
    assert (cfg.retry.max_attempts, cfg.retry.base_delay_s, cfg.retry.max_delay_s) == (5, 1.0, 60.0)
    assert (cfg.timeout.default_s, cfg.timeout.max_s) == (300.0, 1800.0)
    assert cfg.timeout.cancel_deadline_s == 5.0
    assert cfg.scheduler.budget_ms == 50
    assert cfg.eviction.policy == "lru"
    assert cfg.persistence.backend == "sqlite"


def test_the_shipped_example_validates_and_sets_what_it_says() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.models, "the example documents a model catalog"
    assert cfg.model_catalog()[cfg.models[0].aliases[0]].model_ref == cfg.models[0].model_ref


@pytest.mark.parametrize(
    ("case", "text", "expected"),
    [
        (
            "capacity zero is refused",
            "[queue]\ncapacity = 0",
            "queue.capacity: must be -1 or >= 1, got 0",
        ),
        (
            "capacity below minus one is refused",
            "[queue]\ncapacity = -5",
            "queue.capacity: must be -1 or >= 1, got -5",
        ),
        (
            "an unknown full policy is refused",
            '[queue]\nfull_policy = "drop-newest"',
            "queue.full_policy: must be one of reject or drop-oldest-batch, got 'drop-newest'",
        ),
        (
            "an unknown mode is refused",
            'mode = "cloud"',
            "mode: must be one of home, lab or platform, got 'cloud'",
        ),
        (
            "a port out of range is refused",
            "[server]\nport = 70000",
            "server.port: must be between 0 and 65535, got 70000",
        ),
        ("a misspelt key is refused", "[queue]\ncapacty = 5", "queue.capacty: unknown key"),
        ("an unknown section is refused", "[qeue]\ncapacity = 5", "qeue: unknown key"),
        (
            "a boolean is not a number",
            "[retry]\nmax_attempts = true",
            "retry.max_attempts: must be an integer, got True",
        ),
        (
            "the default timeout may not exceed the maximum",
            "[timeout]\ndefault_s = 900\nmax_s = 600",
            "timeout.default_s: must be <= timeout.max_s (600.0), got 900.0",
        ),
        (
            "the maximum timeout is capped at 30 minutes",
            "[timeout]\nmax_s = 3600",
            "timeout.max_s: must be between 0 and 1800, got 3600",
        ),
        (
            "a rhai policy needs a script",
            '[scheduler]\npolicy = "rhai"',
            "scheduler.script: required when scheduler.policy = 'rhai'",
        ),
        (
            "home mode listens on loopback only",
            '[server]\nhost = "0.0.0.0"',
            "server.host: home mode binds loopback only, got '0.0.0.0'",
        ),
        (
            "lab mode needs client tokens",
            'mode = "lab"',
            "auth.clients: at least one client token is required in lab mode",
        ),
        (
            "short tokens are refused",
            '[[auth.clients]]\ntoken = "short"',
            "auth.clients[0].token: must be at least 16 characters",
        ),
        (
            "model names must be unique",
            '[[models]]\nmodel_ref = "a"\n[[models]]\nmodel_ref = "b"\naliases = ["a"]',
            "models[1]: name 'a' is already used by 'a'",
        ),
        (
            "a heartbeat threshold of zero is refused",
            "[heartbeat]\nmissed_threshold = 0",
            "heartbeat.missed_threshold: must be between 1 and 100, got 0",
        ),
    ],
)
def test_invalid_config(case: str, text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_at_once_with_its_key_path() -> None:
    found = problems("[queue]\ncapacity = 0\n[server]\nport = -1\n[retry]\njitter = 2")
    assert len(found) == 3
    assert [p.split(":")[0] for p in found] == ["server.port", "queue.capacity", "retry.jitter"]


def test_malformed_toml_is_a_clear_error_with_its_position() -> None:
    found = problems("[queue\ncapacity = 1")
    assert len(found) == 1 and found[0].startswith("malformed TOML:")
    assert "line 1" in found[0]


def test_environment_overrides_win_over_the_file() -> None:
    cfg = OrchestratorConfig.from_toml(
        "[queue]\ncapacity = 10",
        env={
            "ORCHESTRATORD_QUEUE__CAPACITY": "500",
            "ORCHESTRATORD_SERVER__HOST": "localhost",
            "ORCHESTRATORD_QUEUE__FULL_POLICY": "drop-oldest-batch",
            "UNRELATED": "x",
        },
    )
    assert cfg.queue.capacity == 500
    assert cfg.server.host == "localhost"
    assert cfg.queue.full_policy == "drop-oldest-batch"


def test_a_bad_environment_override_is_reported_with_its_key_path() -> None:
    assert problems("", ORCHESTRATORD_QUEUE__CAPACITY="0") == [
        "queue.capacity: must be -1 or >= 1, got 0"
    ]


def test_load_config_without_a_file_uses_the_embedded_defaults() -> None:
    assert load_config(None) == OrchestratorConfig()


def test_a_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)
    assert "cannot read config file" in info.value.problems[0]


def test_the_effective_config_round_trips_through_plain_data() -> None:
    cfg = load_config(EXAMPLE)
    assert OrchestratorConfig.from_mapping(cfg.to_toml_dict()) == cfg


def test_the_scheduler_knobs_reach_the_built_in_scheduler() -> None:

    cfg = OrchestratorConfig.from_toml(
        "[scheduler]\nscale_out = false\ndrain_after_s = 5\nmax_drains = 0\nmax_actions = 8"
    )
    built = builtin_scheduler_from_config(cfg)
    assert (built.scale_out, built.drain_after_s, built.max_drains, built.max_actions) == (
        False,
        5.0,
        0,
        8,
    )
    assert problems("[scheduler]\nmax_actions = 0") == [
        "scheduler.max_actions: must be between 1 and 100000, got 0"
    ]
