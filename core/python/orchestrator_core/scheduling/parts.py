"""StateParts: the cluster state's indexes as the state hands them to its readers.

A :class:`~orchestrator_core.scheduling.state.ClusterState` owns one index per concern; its
snapshots (and the Rhai ``ctx`` builder behind them) read those indexes directly, through
their public methods, without going back through the state. :class:`Generation` tells them
whether the state has changed since: the state marks it stale at its next change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator_core.scheduling.demand_index import DemandIndex
from orchestrator_core.scheduling.fleet_index import FleetIndex
from orchestrator_core.scheduling.queue_index import QueueIndex
from orchestrator_core.scheduling.running import RunningJobs

__all__ = ["CtxCache", "Generation", "StateParts"]

CtxCache = dict[str, tuple[int, dict[str, Any]]]
"""Pool id -> (pool revision, the pool's Rhai ctx map without its heartbeat age)."""


class Generation:
    """Shared by the snapshots of one state version; the state marks it ``stale`` at its
    next change, so a snapshot checks its freshness with one attribute read."""

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


@dataclass(frozen=True, slots=True)
class StateParts:
    """The state's indexes its readers read (read-only for them)."""

    queue: QueueIndex
    demand: DemandIndex
    running: RunningJobs
    fleet: FleetIndex
    ctx_cache: CtxCache
