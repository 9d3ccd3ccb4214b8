"""Pool agent configuration (TOML) and the simulator's model list: valid input parses,
every bad key is reported at once with its path."""

from __future__ import annotations

from pathlib import Path

import pytest
from llorch_pool.agent import PoolAgentConfig
from llorch_pool.agent.cli import main
from llorch_pool.agent.launcher import LaunchSpec, ModelSpec, SubprocessEngineLauncher
from llorch_pool.sim import parse_models
from orchestrator_core.errors import ConfigInvalid

GOOD = """
pool_id = "home-1"
orchestrator_url = "http://127.0.0.1:8080"
listen_port = 0
heartbeat_interval_s = 2

[[gpus]]
gpu_id = "0"
vram_gb = 8

[models."gemma3-270m"]
command = "{python} -m llama_cpp.server --model /m/g.gguf --host {host} --port {port}"
vram_gb = 0.6

[models.native]
command = ["sim", "--port", "{port}", "--id", "{worker_id}"]
vram_bytes = 1000
protocol = "llorch"
max_concurrency = 4

[[static_workers]]
model_ref = "llama-3-8b"
uri = "http://127.0.0.1:8000"
"""


def test_a_full_config_parses_with_defaults() -> None:
    config = PoolAgentConfig.from_toml(GOOD, env={})
    assert config.pool_id == "home-1"
    assert config.heartbeat_interval_s == 2.0
    assert config.gpus[0].vram_total_bytes == 8_000_000_000
    gemma = config.models["gemma3-270m"]
    assert gemma.protocol == "openai"
    assert gemma.health_path == "/v1/models"
    assert gemma.vram_total_bytes == 600_000_000
    assert gemma.argv[:2] == ["{python}", "-m"]
    assert config.models["native"].health_path == "/health"
    assert config.static_workers[0].probe_path == "/v1/models"
    assert config.token is None
    assert config.gpu_detection == "auto"


def test_the_token_comes_from_the_environment_when_the_file_has_none() -> None:
    config = PoolAgentConfig.from_toml(GOOD, env={"LLORCH_POOL_TOKEN": "t0k"})
    assert config.token == "t0k"
    with_token = GOOD.replace("listen_port = 0", 'listen_port = 0\ntoken = "file"')
    assert PoolAgentConfig.from_toml(with_token, env={"LLORCH_POOL_TOKEN": "t0k"}).token == "file"


def test_every_problem_is_reported_with_its_key_path() -> None:
    bad = """
pool_id = "bad id!"
orchestrator_url = "ftp://x"
heartbeat_interval_s = 0
surprise = 1

[[gpus]]
gpu_id = "0"

[models.m]
command = ["run", "{nope}"]
vram_gb = -1
protocol = "grpc"
"""
    with pytest.raises(ConfigInvalid) as info:
        PoolAgentConfig.from_toml(bad, source="pool.toml", env={})
    text = str(info.value)
    for needle in (
        "pool.toml",
        "pool_id",
        "orchestrator_url",
        "heartbeat_interval_s",
        "surprise: unknown key",
        "gpus[0]: vram_bytes or vram_gb is required",
        "models.m.vram_gb",
        "models.m.protocol",
    ):
        assert needle in text, needle


def test_unknown_placeholders_are_refused() -> None:
    text = GOOD.replace("--id", "{modle_ref}")
    with pytest.raises(ConfigInvalid, match="modle_ref"):
        PoolAgentConfig.from_toml(text, env={})


def test_malformed_toml_and_missing_files() -> None:
    with pytest.raises(ConfigInvalid, match="malformed TOML"):
        PoolAgentConfig.from_toml("pool_id = ", env={})
    with pytest.raises(ConfigInvalid, match="cannot read"):
        PoolAgentConfig.load("/nonexistent/pool.toml")


def test_duplicate_gpu_ids_are_refused() -> None:
    text = GOOD + '\n[[gpus]]\ngpu_id = "0"\nvram_gb = 1\n'
    with pytest.raises(ConfigInvalid, match="unique"):
        PoolAgentConfig.from_toml(text, env={})


def test_the_launcher_fills_in_placeholders(tmp_path: Path) -> None:
    config = PoolAgentConfig.from_toml(GOOD, env={})
    launcher = SubprocessEngineLauncher(config.models, host="127.0.0.1", log_dir=tmp_path)
    spec = launcher.catalog()["native"]
    assert spec == ModelSpec("native", 1000, spec.protocol, 4, "/health", None)
    argv = launcher.argv(LaunchSpec("w-1", spec, "0"), 4242)
    assert argv == ["sim", "--port", "4242", "--id", "w-1"]


def test_the_cli_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "ok.toml"
    good.write_text(GOOD)
    assert main(["--config", str(good), "--check"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("pool_id = 3\n")
    assert main(["--config", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert "pool_id" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("m1:6,m2:12", [("m1", 6_000_000_000), ("m2", 12_000_000_000)]),
        ("tiny:0.5", [("tiny", 500_000_000)]),
    ],
)
def test_parse_models(text: str, expected: list[tuple[str, int]]) -> None:
    assert [(m.model_ref, m.vram_bytes) for m in parse_models(text)] == expected


def test_parse_models_options_and_errors() -> None:
    (m,) = parse_models("m2:12:load_s=2:tps=30:ttft_ms=40:concurrency=3")
    assert (m.load_time_s, m.tokens_per_s, m.ttft_s, m.max_concurrency) == (2.0, 30.0, 0.04, 3)
    for bad, needle in [
        ("m1", "name:vram_gb"),
        ("m1:x", "name:vram_gb"),
        ("m1:1:speed=3", "unknown option"),
        ("m1:1:tps=fast", "number"),
        ("", "at least one"),
        ("bad name:1", "bad model name"),
    ]:
        with pytest.raises(ValueError, match=needle):
            parse_models(bad)
