"""Configuration: ``OrchestratorConfig`` parsed from TOML, with defaults, environment overrides
and validation that reports *every* problem with its key path.

Pure: :func:`OrchestratorConfig.from_toml` takes text and an environment mapping; the caller
decides where they come from (:func:`load_config` is the thin file wrapper). Environment
overrides are ``ORCHESTRATORD_<KEY>`` for top-level keys and ``ORCHESTRATORD_<SECTION>__<KEY>``
for section keys, e.g. ``ORCHESTRATORD_QUEUE__CAPACITY=500``; values are read as TOML
literals when they parse as one (``500``, ``true``, ``["a", "b"]``), else as plain strings.

The commented example at ``examples/config/orchestrator.toml`` documents every key.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator_core.api import field_error
from orchestrator_core.errors import ConfigInvalid

__all__ = [
    "ENV_PREFIX",
    "AuthConfig",
    "ClientAuth",
    "EvictionConfig",
    "HeartbeatConfig",
    "ModelEntry",
    "OrchestratorConfig",
    "HaConfig",
    "PersistenceConfig",
    "QueueConfig",
    "RetryConfig",
    "SchedulerConfig",
    "ServerConfig",
    "TenantConfig",
    "TimeoutConfig",
    "config_problems",
    "load_config",
    "parse_toml",
    "read_toml",
]

ENV_PREFIX = "ORCHESTRATORD_"
"""Prefix of environment overrides."""

Mode = Literal["home", "lab", "platform"]


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ServerConfig(_Section):
    """``[server]``: where the daemon listens."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024)] = 2 * 1024 * 1024


class QueueConfig(_Section):
    """``[queue]``: capacity, full-queue policy, starvation guard and fairness."""

    capacity: int = 100
    full_policy: Literal["reject", "drop-oldest-batch"] = "reject"
    promote_after_s: Annotated[float, Field(gt=0)] | None = 300.0
    fairness: Literal["none", "tenant", "session"] = "none"
    fairness_weights: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 1

    @field_validator("capacity")
    @classmethod
    def _capacity(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError(f"must be -1 or >= 1, got {v}")
        return v


class SchedulerConfig(_Section):
    """``[scheduler]``: the policy chosen by name, placement and the Rhai limits."""

    policy: Literal["fifo", "priority", "fair-share", "rhai", "rules"] = "priority"
    placement: Literal["least-loaded", "most-vram-free", "round-robin"] = "least-loaded"
    script: str | None = Field(default=None, description="Rhai policy file (policy = 'rhai')")
    rules: str | None = Field(default=None, description="YAML rules file (policy = 'rules')")
    budget_ms: Annotated[int, Field(ge=1, le=1000)] = 50
    max_operations: Annotated[int, Field(ge=1000)] = 1_000_000
    snapshot_window: Annotated[int, Field(ge=1)] = 256
    quota_action: Literal["wait", "reject"] = "wait"
    scale_out: bool = Field(
        default=True, description="Start another worker when a model's queue exceeds its slots"
    )
    drain_after_s: Annotated[float, Field(gt=0)] | None = Field(
        default=60.0,
        description="Drain a busy worker that blocks a model whose oldest job waited this long",
    )
    max_drains: Annotated[int, Field(ge=0, le=1000)] = 2
    max_actions: Annotated[int, Field(ge=1, le=100_000)] = 256

    @model_validator(mode="after")
    def _script_for_policy(self) -> Self:
        if self.policy == "rhai" and not self.script:
            raise ValueError("scheduler.script: required when scheduler.policy = 'rhai'")
        if self.policy == "rules" and not self.rules:
            raise ValueError("scheduler.rules: required when scheduler.policy = 'rules'")
        return self


class HeartbeatConfig(_Section):
    """``[heartbeat]``: pools go offline after ``interval_s × missed_threshold`` of silence."""

    interval_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    missed_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    max_clock_skew_s: Annotated[float, Field(gt=0)] = 30.0


class RetryConfig(_Section):
    """``[retry]``: exponential backoff with jitter, before the first token only."""

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    base_delay_s: Annotated[float, Field(ge=0)] = 1.0
    multiplier: Annotated[float, Field(ge=1)] = 2.0
    max_delay_s: Annotated[float, Field(ge=0)] = 60.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.2


class TimeoutConfig(_Section):
    """``[timeout]``: per-job timeouts, cancellation deadline and SSE reconnect grace."""

    default_s: Annotated[float, Field(gt=0)] = 300.0
    max_s: Annotated[float, Field(gt=0, le=1800)] = 1800.0
    cancel_deadline_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    reconnect_grace_s: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @model_validator(mode="after")
    def _default_within_max(self) -> Self:
        if self.default_s > self.max_s:
            raise ValueError(
                f"timeout.default_s: must be <= timeout.max_s ({self.max_s}), got {self.default_s}"
            )
        return self


class EvictionConfig(_Section):
    """``[eviction]``: which idle worker to stop when VRAM is needed."""

    policy: Literal["lru", "lfu", "manual"] = "lru"
    min_idle_s: Annotated[float, Field(ge=0)] = 0.0


class PersistenceConfig(_Section):
    """``[persistence]``: where jobs are stored durably."""

    backend: Literal["sqlite", "postgres", "memory"] = "sqlite"
    data_dir: str = "~/.local/share/llama-orch"
    sqlite_path: str | None = None
    postgres_dsn: str | None = None
    result_retention_s: Annotated[float, Field(ge=0)] = 7 * 24 * 3600.0

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> Self:
        if self.backend == "postgres" and not self.postgres_dsn:
            raise ValueError("persistence.postgres_dsn: required when backend = 'postgres'")
        return self


class HaConfig(_Section):
    """``[ha]``: several orchestratord on one PostgreSQL (``persistence.backend =
    "postgres"``). One instance leads — it holds a lease on the database and runs the
    queue, scheduling and dispatch; the others are followers, ready to take over."""

    lease_ttl_s: Annotated[float, Field(ge=0.5, le=300)] | None = None
    """How long a lease lives without renewal (default: ``heartbeat.interval_s``, at most
    30 s): a follower takes over within about 1.3 times this after the leader died."""
    advertise_url: str | None = None
    """This instance's URL as clients and pool agents reach it, sent to them as the leader's
    address by followers (``X-Orchestrator-Leader``); default ``http://<host>:<port>``."""

    def ttl_s(self, heartbeat: HeartbeatConfig) -> float:
        """The lease's lifetime for a daemon with this ``heartbeat`` section."""
        if self.lease_ttl_s is not None:
            return self.lease_ttl_s
        return max(0.5, min(heartbeat.interval_s, 30.0))


class ClientAuth(_Section):
    """One client token, optionally bound to a tenant (platform mode)."""

    token: Annotated[str, Field(min_length=16)]
    tenant: str | None = None


class AuthConfig(_Section):
    """``[auth]``: bearer tokens for clients and pools (lab and platform modes)."""

    clients: list[ClientAuth] = Field(default_factory=list)
    pool_tokens: list[Annotated[str, Field(min_length=16)]] = Field(default_factory=list)


class ModelEntry(_Section):
    """``[[models]]``: one model of the catalog."""

    model_ref: Annotated[str, Field(min_length=1)]
    aliases: list[str] = Field(default_factory=list)
    vram_bytes: Annotated[int, Field(ge=0)] = 0
    context_length: Annotated[int, Field(ge=1)] = 4096
    family: str = ""
    chat: bool = Field(
        default=True,
        description="Serves chat (its engines apply a chat template); false for base models: "
        "POST /v1/chat/completions for it is refused with 400",
    )


class TenantConfig(_Section):
    """``[[tenants]]``: a tenant's fair-share weight and quotas (platform mode)."""

    tenant_id: Annotated[str, Field(min_length=1)]
    weight: Annotated[float, Field(gt=0)] = 1.0
    max_queued: Annotated[int, Field(ge=0)] | None = None
    max_running: Annotated[int, Field(ge=0)] | None = None


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OrchestratorConfig(_Section):
    """The whole configuration. Every key has a default: an empty file is a valid config."""

    mode: Mode = "home"
    server: ServerConfig = Field(default_factory=ServerConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    timeout: TimeoutConfig = Field(default_factory=TimeoutConfig)
    eviction: EvictionConfig = Field(default_factory=EvictionConfig)
    persistence: PersistenceConfig = Field(default_factory=PersistenceConfig)
    ha: HaConfig = Field(default_factory=HaConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    models: list[ModelEntry] = Field(default_factory=list)
    tenants: list[TenantConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems: list[str] = []
        if self.mode == "home" and not _is_loopback(self.server.host):
            problems.append(
                f"server.host: home mode binds loopback only, got {self.server.host!r}"
                " (use mode = 'lab' with auth tokens to listen on the network)"
            )
        if self.mode != "home":
            if not self.auth.clients:
                problems.append(
                    f"auth.clients: at least one client token is required in {self.mode} mode"
                )
            if not self.auth.pool_tokens:
                problems.append(
                    f"auth.pool_tokens: at least one pool token is required in {self.mode} mode"
                )
        names: dict[str, str] = {}
        for i, model in enumerate(self.models):
            for name in (model.model_ref, *model.aliases):
                if name in names:
                    problems.append(
                        f"models[{i}]: name {name!r} is already used by {names[name]!r}"
                    )
                names.setdefault(name, model.model_ref)
        seen: set[str] = set()
        for i, tenant in enumerate(self.tenants):
            if tenant.tenant_id in seen:
                problems.append(f"tenants[{i}].tenant_id: duplicate tenant {tenant.tenant_id!r}")
            seen.add(tenant.tenant_id)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> OrchestratorConfig:
        """Validate a decoded config (e.g. TOML) after applying environment overrides.

        Raises :class:`ConfigInvalid` listing every problem with its key path.
        """
        merged = _apply_env(dict(data), env or {})
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigInvalid(config_problems(exc, cls), source=source) from None

    @classmethod
    def from_toml(
        cls, text: str, *, env: Mapping[str, str] | None = None, source: str | None = None
    ) -> OrchestratorConfig:
        """Parse TOML text; malformed TOML gives :class:`ConfigInvalid` with line and column."""
        return cls.from_mapping(parse_toml(text, source=source), env=env, source=source)

    def model_catalog(self) -> dict[str, ModelEntry]:
        """Models keyed by model_ref *and* by every alias."""
        out: dict[str, ModelEntry] = {}
        for model in self.models:
            out[model.model_ref] = model
            for alias in model.aliases:
                out.setdefault(alias, model)
        return out

    def to_toml_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (``None`` values left out, as in TOML)."""
        data: dict[str, Any] = _drop_none(self.model_dump(mode="json"))
        return data


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def parse_toml(text: str, *, source: str | None = None) -> dict[str, Any]:
    """Decode TOML text. Malformed TOML raises :class:`ConfigInvalid` with ``source`` (the
    file) and one problem giving the line and column: ``malformed TOML: Invalid value (at line
    3, column 7)``. Every TOML file of the project (orchestratord's, the pool agent's,
    llorch's settings) is read through here, so a bad file is reported the same way."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid([f"malformed TOML: {exc}"], source=source) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read and decode the TOML file at ``path`` (see :func:`parse_toml`); a file that cannot
    be read raises :class:`ConfigInvalid` naming it: ``cannot read config file: <reason>``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigInvalid([f"cannot read config file: {reason}"], source=str(p)) from None
    except UnicodeDecodeError:
        raise ConfigInvalid(["cannot read config file: not UTF-8 text"], source=str(p)) from None
    return parse_toml(text, source=str(p))


_KEY_PATH_PREFIX = re.compile(r"^[A-Za-z_][\w-]*(?:\.[\w-]+|\[\d+\])+: ")


def config_problems(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """The problems of a configuration that failed validation, one line each, each naming its
    key path (``queue.capacity: must be -1 or >= 1, got 0``; ``bogus: unknown key``).
    ``model`` is the configuration's model (for the bounds of ranges). Messages of
    whole-model validators that already name their keys are kept as they are."""
    out: list[str] = []
    for err in exc.errors():
        if err["type"] == "value_error" and not err["loc"]:
            out.extend(str(err.get("ctx", {}).get("error", err["msg"])).splitlines())
            continue
        if err["type"] == "value_error":
            reason = str(err.get("ctx", {}).get("error", err["msg"]))
            if _KEY_PATH_PREFIX.match(reason):
                out.append(reason)  # already carries its full key path
                continue
        message = field_error(model, err).message
        out.append(message.replace(": unknown field", ": unknown key"))
    return out


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = _parse_env_value(raw)
    return data


def load_config(
    path: str | Path | None, *, env: Mapping[str, str] | None = None
) -> OrchestratorConfig:
    """Read ``path`` (or use the embedded defaults when ``None``) and validate it."""
    if path is None:
        return OrchestratorConfig.from_mapping({}, env=env, source="defaults")
    return OrchestratorConfig.from_mapping(read_toml(path), env=env, source=str(Path(path)))
