"""Pools, their GPUs and workers, the heartbeat rules and the pool registry.

A *pool* is one GPU machine (or a set of engines) managed by a pool agent. It registers with
the orchestrator, then sends heartbeats carrying its GPU and worker inventory. The registry
derives each pool's status from the age of its last heartbeat
(:class:`HeartbeatRules`: pure functions of a pool record, a message and ``now``):

* ``online``   — heartbeat age ≤ 1.5 × interval (one late beat is tolerated);
* ``degraded`` — one or more beats missed, or the pool itself reports ``degraded``;
* ``offline``  — no heartbeat for ``interval × missed_threshold`` (default 15 s × 3). An
  offline pool gets no work.

Re-registering a pool id that is live with a *different* endpoint is a
:class:`~orchestrator_core.errors.PoolConflict` (HTTP 409); the same endpoint refreshes the
registration; an offline pool id may be taken over. A heartbeat older than the pool's
previous one, or too far from the orchestrator's clock, is refused as stale.
:class:`InMemoryPoolRegistry` keeps pools in memory and applies those rules with its clock.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal, Protocol, Self, runtime_checkable

from pydantic import Field, Strict, model_validator

from orchestrator_core.api import ApiModel
from orchestrator_core.errors import PoolConflict, PoolNotFound, StaleHeartbeat

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig

__all__ = [
    "GpuInfo",
    "HeartbeatRules",
    "InMemoryPoolRegistry",
    "PoolHeartbeat",
    "PoolInfo",
    "PoolRegistration",
    "PoolRegistry",
    "PoolStatus",
    "StatusChange",
    "WorkerInfo",
    "WorkerStatus",
]

Clock = Callable[[], float]
_Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class PoolStatus(StrEnum):
    """Health of a pool as the orchestrator sees it."""

    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"


class WorkerStatus(StrEnum):
    """State of one worker (an engine process serving one model)."""

    READY = "ready"
    BUSY = "busy"
    STARTING = "starting"
    DRAINING = "draining"
    FAILED = "failed"


class GpuInfo(ApiModel):
    """One GPU of a pool. ``vram_free_bytes`` is what the pool measured (or accounted)."""

    gpu_id: _Id
    name: str = "gpu"
    vram_total_bytes: Annotated[int, Field(ge=0)]
    vram_free_bytes: Annotated[int, Field(ge=0)]
    utilization: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    @model_validator(mode="after")
    def _free_within_total(self) -> Self:
        if self.vram_free_bytes > self.vram_total_bytes:
            raise ValueError("vram_free_bytes must not exceed vram_total_bytes")
        return self


class WorkerInfo(ApiModel):
    """One worker: which model it serves, on which GPUs, and how busy it is."""

    worker_id: _Id
    model_ref: Annotated[str, Field(min_length=1, max_length=256)]
    gpu_ids: list[_Id] = Field(default_factory=list)
    status: Annotated[WorkerStatus, Strict(False)] = WorkerStatus.STARTING
    uri: str = ""
    vram_bytes: Annotated[int, Field(ge=0)] = 0
    current_job_id: str | None = None
    active_jobs: Annotated[int, Field(ge=0)] = 0
    max_concurrency: Annotated[int, Field(ge=1)] = 1
    last_used_at: float | None = None
    jobs_completed: Annotated[int, Field(ge=0)] = 0
    protocol: Literal["llorch", "openai"] = Field(
        default="llorch",
        description="How to talk to the worker: 'llorch' (POST /execute answered with an SSE "
        "stream of tokens) or 'openai' (OpenAI-compatible /v1/completions streaming: vLLM, "
        "llama.cpp, SGLang, Ollama)",
    )


class PoolRegistration(ApiModel):
    """``POST /v2/pools/register``: a pool announces itself."""

    pool_id: _Id
    endpoint: Annotated[str, Field(min_length=1, max_length=512)]
    capabilities: list[str] = Field(default_factory=lambda: ["text-gen"])
    gpus: list[GpuInfo] = Field(default_factory=list)
    workers: list[WorkerInfo] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list, description="Models the pool can load")
    model_vram_bytes: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="VRAM a worker of each model needs on this pool, when the pool knows it",
    )
    version: str = ""


class PoolHeartbeat(ApiModel):
    """``POST /v2/pools/{id}/heartbeat``: current inventory, stamped by the pool."""

    sent_at: float = Field(description="Unix seconds when the pool sent this heartbeat")
    gpus: list[GpuInfo] = Field(default_factory=list)
    workers: list[WorkerInfo] = Field(default_factory=list)
    models: list[str] | None = None
    model_vram_bytes: dict[str, Annotated[int, Field(ge=0)]] | None = None
    reported_status: Annotated[PoolStatus, Strict(False)] | None = Field(
        default=None, description="The pool may report itself degraded (e.g. a GPU error)"
    )


class PoolInfo(ApiModel):
    """The registry's view of one pool. ``status`` is derived when the view is read."""

    pool_id: str
    endpoint: str
    status: Annotated[PoolStatus, Strict(False)] = PoolStatus.ONLINE
    capabilities: list[str] = Field(default_factory=list)
    gpus: list[GpuInfo] = Field(default_factory=list)
    workers: list[WorkerInfo] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    model_vram_bytes: dict[str, int] = Field(default_factory=dict)
    version: str = ""
    registered_at: float
    last_heartbeat: float
    reported_status: Annotated[PoolStatus, Strict(False)] | None = None


class StatusChange(ApiModel):
    """A pool whose derived status changed since the registry was last swept."""

    pool_id: str
    old: Annotated[PoolStatus, Strict(False)]
    new: Annotated[PoolStatus, Strict(False)]


@runtime_checkable
class PoolRegistry(Protocol):
    """Where the orchestrator keeps its pools."""

    def register(self, registration: PoolRegistration) -> PoolInfo:
        """Add or refresh a pool; :class:`PoolConflict` if a live pool holds the id elsewhere."""
        ...

    def unregister(self, pool_id: str) -> PoolInfo:
        """Remove a pool; :class:`PoolNotFound` if absent."""
        ...

    def get(self, pool_id: str) -> PoolInfo:
        """The pool with its current status; :class:`PoolNotFound` if absent."""
        ...

    def list(self) -> list[PoolInfo]:
        """All pools with their current status, by pool id."""
        ...

    def heartbeat(self, pool_id: str, beat: PoolHeartbeat) -> PoolInfo:
        """Record a heartbeat; :class:`StaleHeartbeat` if it is older than the last one."""
        ...


@dataclass(frozen=True, slots=True)
class HeartbeatRules:
    """How registrations and heartbeats change a pool's record, and its status over time.

    Pure: every method takes the record, the message and ``now`` (Unix seconds) and returns
    a new :class:`PoolInfo` (or raises), so whoever keeps the pools — the daemon's cluster
    state, :class:`InMemoryPoolRegistry` — applies the same rules.
    """

    heartbeat_interval_s: float = 15.0
    missed_threshold: int = 3
    max_clock_skew_s: float = 30.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s <= 0 or self.missed_threshold < 1:
            raise ValueError("heartbeat interval must be > 0 and missed threshold >= 1")

    @classmethod
    def from_config(cls, config: OrchestratorConfig) -> HeartbeatRules:
        """The rules of ``[heartbeat]``: ``interval_s``, ``missed_threshold``,
        ``max_clock_skew_s``."""
        hb = config.heartbeat
        return cls(hb.interval_s, hb.missed_threshold, hb.max_clock_skew_s)

    @property
    def offline_after_s(self) -> float:
        """Heartbeat age at which a pool goes offline: interval × missed threshold."""
        return self.heartbeat_interval_s * self.missed_threshold

    def status(self, pool: PoolInfo, now: float) -> PoolStatus:
        """Status of ``pool`` at ``now`` from its heartbeat age (and what it reports)."""
        age = now - pool.last_heartbeat
        if age > self.offline_after_s:
            return PoolStatus.OFFLINE
        if age > 1.5 * self.heartbeat_interval_s or pool.reported_status in (
            PoolStatus.DEGRADED,
            PoolStatus.OFFLINE,
        ):
            return PoolStatus.DEGRADED
        return PoolStatus.ONLINE

    def registered(self, reg: PoolRegistration, existing: PoolInfo | None, now: float) -> PoolInfo:
        """The record of a pool that (re-)registers at ``now``, with its status;
        :class:`PoolConflict` if ``existing`` (the record of the same pool id) is not offline
        and has another endpoint."""
        if (
            existing is not None
            and existing.endpoint != reg.endpoint
            and self.status(existing, now) is not PoolStatus.OFFLINE
        ):
            raise PoolConflict(reg.pool_id, existing.endpoint, reg.endpoint)
        pool = PoolInfo(
            pool_id=reg.pool_id,
            endpoint=reg.endpoint,
            capabilities=list(reg.capabilities),
            gpus=list(reg.gpus),
            workers=list(reg.workers),
            models=list(reg.models),
            model_vram_bytes=dict(reg.model_vram_bytes),
            version=reg.version,
            registered_at=existing.registered_at if existing else now,
            last_heartbeat=now,
        )
        pool.status = self.status(pool, now)
        return pool

    def heartbeat(
        self, existing: PoolInfo, beat: PoolHeartbeat, now: float, last_sent_at: float | None
    ) -> PoolInfo:
        """The record of ``existing`` after ``beat`` arrived at ``now``, with its status:
        inventory replaced, heartbeat time refreshed. :class:`StaleHeartbeat` if the beat's
        own timestamp is older than the previous beat's (``last_sent_at``) or further than
        ``max_clock_skew_s`` from ``now``."""
        pool_id = existing.pool_id
        if last_sent_at is not None and beat.sent_at < last_sent_at:
            raise StaleHeartbeat(pool_id, f"sent_at {beat.sent_at} is older than {last_sent_at}")
        if abs(beat.sent_at - now) > self.max_clock_skew_s:
            raise StaleHeartbeat(
                pool_id, f"sent_at {beat.sent_at} is {beat.sent_at - now:+.1f}s off the clock"
            )
        update: dict[str, object] = {
            "gpus": list(beat.gpus),
            "workers": list(beat.workers),
            "last_heartbeat": now,
            "reported_status": beat.reported_status,
        }
        if beat.models is not None:
            update["models"] = list(beat.models)
        if beat.model_vram_bytes is not None:
            update["model_vram_bytes"] = dict(beat.model_vram_bytes)
        pool = existing.model_copy(update=update)
        pool.status = self.status(pool, now)
        return pool


class InMemoryPoolRegistry:
    """In-memory :class:`PoolRegistry` applying :class:`HeartbeatRules` with a clock.

    ``clock`` returns Unix seconds. ``max_clock_skew_s`` bounds how far a heartbeat's own
    timestamp may be from the registry's clock before it is refused as stale.
    """

    def __init__(
        self,
        *,
        heartbeat_interval_s: float = 15.0,
        missed_threshold: int = 3,
        max_clock_skew_s: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        self.rules = HeartbeatRules(heartbeat_interval_s, missed_threshold, max_clock_skew_s)
        self._clock = clock
        self._pools: dict[str, PoolInfo] = {}
        self._beat_sent_at: dict[str, float] = {}
        self._last_seen: dict[str, PoolStatus] = {}

    @property
    def heartbeat_interval_s(self) -> float:
        """Expected time between two heartbeats of a pool."""
        return self.rules.heartbeat_interval_s

    @property
    def missed_threshold(self) -> int:
        """Heartbeats missed before a pool goes offline."""
        return self.rules.missed_threshold

    @property
    def max_clock_skew_s(self) -> float:
        """How far a heartbeat's own timestamp may be from the clock."""
        return self.rules.max_clock_skew_s

    @property
    def offline_after_s(self) -> float:
        """Heartbeat age at which a pool goes offline: interval × missed threshold."""
        return self.rules.offline_after_s

    def status_of(self, pool: PoolInfo, now: float | None = None) -> PoolStatus:
        """Status of ``pool`` at ``now`` (default: the clock) from its heartbeat age."""
        return self.rules.status(pool, self._clock() if now is None else now)

    def _view(self, pool: PoolInfo, now: float) -> PoolInfo:
        return pool.model_copy(update={"status": self.status_of(pool, now)})

    def register(self, registration: PoolRegistration) -> PoolInfo:
        """Add or refresh a pool. See the module docstring for conflicts."""
        now = self._clock()
        pool = self.rules.registered(registration, self._pools.get(registration.pool_id), now)
        self._pools[pool.pool_id] = pool
        self._beat_sent_at.pop(pool.pool_id, None)
        return pool.model_copy()

    def unregister(self, pool_id: str) -> PoolInfo:
        """Remove ``pool_id`` and return its last view."""
        pool = self._pools.pop(pool_id, None)
        if pool is None:
            raise PoolNotFound(pool_id)
        self._beat_sent_at.pop(pool_id, None)
        self._last_seen.pop(pool_id, None)
        return pool.model_copy(update={"status": PoolStatus.OFFLINE})

    def get(self, pool_id: str) -> PoolInfo:
        """The pool with its current status."""
        pool = self._pools.get(pool_id)
        if pool is None:
            raise PoolNotFound(pool_id)
        return self._view(pool, self._clock())

    def list(self) -> list[PoolInfo]:
        """All pools with their current status, sorted by pool id."""
        now = self._clock()
        return [self._view(self._pools[k], now) for k in sorted(self._pools)]

    def heartbeat(self, pool_id: str, beat: PoolHeartbeat) -> PoolInfo:
        """Record ``beat``: replace the inventory and refresh the heartbeat time."""
        existing = self._pools.get(pool_id)
        if existing is None:
            raise PoolNotFound(pool_id)
        now = self._clock()
        pool = self.rules.heartbeat(existing, beat, now, self._beat_sent_at.get(pool_id))
        self._pools[pool_id] = pool
        self._beat_sent_at[pool_id] = beat.sent_at
        return pool.model_copy()

    def sweep(self) -> builtins.list[StatusChange]:
        """Pools whose derived status changed since the previous sweep (new pools included,
        from ``offline``). The daemon calls this on a timer to react to pools going away."""
        now = self._clock()
        changes: list[StatusChange] = []
        for pool_id, pool in self._pools.items():
            new = self.status_of(pool, now)
            old = self._last_seen.get(pool_id, PoolStatus.OFFLINE)
            if new is not old:
                changes.append(StatusChange(pool_id=pool_id, old=old, new=new))
                self._last_seen[pool_id] = new
        return changes
