"""Eviction policies: which idle worker to stop when a model needs its VRAM.

Only *idle* workers are candidates (ready, no active job, not being started or stopped, idle
for at least ``min_idle_s``); a busy worker is never evicted. ``manual`` never evicts
automatically: an operator stops workers by hand and jobs wait meanwhile.

* :class:`LruEviction` — least recently used first;
* :class:`LfuEviction` — least frequently used (fewest completed jobs) first, then LRU;
* :class:`ManualEviction` — no automatic eviction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "EvictionCandidate",
    "EvictionPolicy",
    "LfuEviction",
    "LruEviction",
    "ManualEviction",
]

_NEVER = float("-inf")


class EvictionCandidate(Protocol):
    """What an eviction policy reads from a worker."""

    @property
    def worker_id(self) -> str:
        """Worker id."""
        ...

    @property
    def last_used_at(self) -> float | None:
        """Unix seconds of its last finished job (``None`` = never used)."""
        ...

    @property
    def jobs_completed(self) -> int:
        """Jobs it finished."""
        ...


@runtime_checkable
class EvictionPolicy(Protocol):
    """Orders idle workers for eviction and compares eviction plans."""

    @property
    def name(self) -> str:
        """Registry name (``lru``, ``lfu``, ``manual``)."""
        ...

    @property
    def automatic(self) -> bool:
        """False for ``manual``: the scheduler never evicts."""
        ...

    @property
    def min_idle_s(self) -> float:
        """A worker used more recently than this is not a candidate."""
        ...

    def victim_key(self, worker: EvictionCandidate) -> tuple[Any, ...]:
        """Sort key of a candidate; lower is evicted first."""
        ...

    def plan_cost(self, victims: Sequence[EvictionCandidate]) -> tuple[Any, ...]:
        """Cost of evicting all of ``victims`` (to choose between GPUs); lower is better."""
        ...


class _AutomaticEviction:
    """Shared by the automatic policies: never evict a worker used less than ``min_idle_s``
    ago."""

    automatic = True

    def __init__(self, min_idle_s: float = 0.0) -> None:
        if min_idle_s < 0:
            raise ValueError(f"min_idle_s: must be >= 0, got {min_idle_s}")
        self.min_idle_s = min_idle_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_idle_s={self.min_idle_s!r})"


class LruEviction(_AutomaticEviction):
    """Least recently used first. A plan's cost is its most recent use (older is cheaper)."""

    name = "lru"

    def victim_key(self, worker: EvictionCandidate) -> tuple[Any, ...]:
        """``(last_used_at, worker_id)``; never-used workers go first."""
        last = worker.last_used_at
        return (_NEVER if last is None else last, worker.worker_id)

    def plan_cost(self, victims: Sequence[EvictionCandidate]) -> tuple[Any, ...]:
        """``(most recent use among victims, number of victims)``."""
        latest = max((_NEVER if v.last_used_at is None else v.last_used_at) for v in victims)
        return (latest, len(victims))


class LfuEviction(_AutomaticEviction):
    """Least frequently used first (fewest completed jobs), then least recently used."""

    name = "lfu"

    def victim_key(self, worker: EvictionCandidate) -> tuple[Any, ...]:
        """``(jobs_completed, last_used_at, worker_id)``."""
        last = worker.last_used_at
        return (worker.jobs_completed, _NEVER if last is None else last, worker.worker_id)

    def plan_cost(self, victims: Sequence[EvictionCandidate]) -> tuple[Any, ...]:
        """``(total completed jobs of the victims, number of victims)``."""
        return (sum(v.jobs_completed for v in victims), len(victims))


class ManualEviction:
    """Never evict automatically."""

    name = "manual"
    automatic = False

    def __init__(self, min_idle_s: float = 0.0) -> None:
        self.min_idle_s = min_idle_s

    def __repr__(self) -> str:
        return f"ManualEviction(min_idle_s={self.min_idle_s!r})"

    def victim_key(self, worker: EvictionCandidate) -> tuple[Any, ...]:
        """Worker id (only used by tools that list candidates)."""
        return (worker.worker_id,)

    def plan_cost(self, victims: Sequence[EvictionCandidate]) -> tuple[Any, ...]:
        """Unused: manual plans are never made."""
        return (len(victims),)
