"""The plugins by name, and the functions that build them from the configuration.

One place decides which queue order, placement and eviction policy a configuration names,
so the cluster state (which indexes jobs and free workers by the order and the placement)
and the schedulers (which check the state is indexed the way they expect) always agree.
Nothing here imports the state or a scheduler: both import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from orchestrator_core.errors import ConfigInvalid
from orchestrator_core.scheduling.eviction import (
    EvictionPolicy,
    LfuEviction,
    LruEviction,
    ManualEviction,
)
from orchestrator_core.scheduling.ordering import (
    FairShareOrder,
    FifoOrder,
    PriorityOrder,
    QueueOrder,
)
from orchestrator_core.scheduling.placement import (
    LeastLoadedPlacement,
    MostVramFreePlacement,
    Placement,
    RoundRobinPlacement,
)

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig

__all__ = [
    "BUILTIN_POLICIES",
    "EVICTIONS",
    "PLACEMENTS",
    "build_eviction",
    "build_placement",
    "build_queue_order",
]

BUILTIN_POLICIES = ("fifo", "priority", "fair-share")
"""``scheduler.policy`` values the built-in scheduler serves."""

PLACEMENTS: dict[str, Callable[[], Placement]] = {
    "least-loaded": LeastLoadedPlacement,
    "most-vram-free": MostVramFreePlacement,
    "round-robin": RoundRobinPlacement,
}
"""Placement plugins by name."""

EVICTIONS: dict[str, Callable[[float], EvictionPolicy]] = {
    "lru": LruEviction,
    "lfu": LfuEviction,
    "manual": ManualEviction,
}
"""Eviction plugins by name (the argument is ``min_idle_s``)."""


def build_queue_order(config: OrchestratorConfig) -> QueueOrder:
    """The queue order of ``config``: ``fifo``; ``priority`` (fair within a priority when
    ``queue.fairness`` is ``tenant`` or ``session``); ``fair-share`` (by ``queue.fairness``,
    tenants by default). Scripted policies (``rhai``, ``rules``) see the priority order.
    Weights: ``tenants[].weight``, overridden by ``queue.fairness_weights``."""
    policy = config.scheduler.policy
    queue = config.queue
    if policy == "fifo":
        return FifoOrder()
    if policy == "fair-share" or queue.fairness != "none":
        by: Literal["tenant", "session"] = "session" if queue.fairness == "session" else "tenant"
        weights = {t.tenant_id: t.weight for t in config.tenants} if by == "tenant" else {}
        weights.update(queue.fairness_weights)
        return FairShareOrder(by=by, weights=weights, promote_after_s=queue.promote_after_s)
    return PriorityOrder(queue.promote_after_s)


def build_placement(config: OrchestratorConfig | str) -> Placement:
    """The placement named by ``config.scheduler.placement`` (or given by name)."""
    name = config if isinstance(config, str) else config.scheduler.placement
    factory = PLACEMENTS.get(name)
    if factory is None:
        raise ConfigInvalid(
            [f"scheduler.placement: must be one of {', '.join(PLACEMENTS)}, got {name!r}"]
        )
    return factory()


def build_eviction(config: OrchestratorConfig | str, min_idle_s: float = 0.0) -> EvictionPolicy:
    """The eviction policy named by ``config.eviction.policy`` (or given by name)."""
    if isinstance(config, str):
        name = config
    else:
        name, min_idle_s = config.eviction.policy, config.eviction.min_idle_s
    factory = EVICTIONS.get(name)
    if factory is None:
        raise ConfigInvalid(
            [f"eviction.policy: must be one of {', '.join(EVICTIONS)}, got {name!r}"]
        )
    return factory(min_idle_s)
