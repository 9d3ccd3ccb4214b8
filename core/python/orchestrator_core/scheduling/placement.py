"""Worker placement (the score extension point): which ready worker gets the job.

A placement turns a worker's load into a sort key; lower keys win. The cluster state keeps,
per model, the free workers sorted by this key, so choosing one is O(log n) and never scans
the fleet. Keys only get worse as a worker takes more jobs, which lets one scheduling cycle
hand out several jobs without re-sorting the index.

* :class:`LeastLoadedPlacement` — fewest active jobs per slot; tie-break: most free VRAM on
  the worker's GPUs, then worker id.
* :class:`MostVramFreePlacement` — most free VRAM first; tie-break: load, worker id.
* :class:`RoundRobinPlacement` — the worker that got a job least recently (in the state's
  dispatch sequence), so identical workers take turns; tie-break: worker id.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = [
    "LeastLoadedPlacement",
    "MostVramFreePlacement",
    "Placement",
    "PlacementKey",
    "RoundRobinPlacement",
]

PlacementKey = tuple[Any, ...]
"""A placement sort key: compared as a tuple, lower is better, last element the worker id."""


@runtime_checkable
class Placement(Protocol):
    """Scores free workers for one job."""

    @property
    def name(self) -> str:
        """Registry name (``least-loaded``, ``most-vram-free``, ``round-robin``)."""
        ...

    def key(
        self, load: float, gpu_free_bytes: int, last_dispatch: int, worker_id: str
    ) -> PlacementKey:
        """Sort key of a worker: ``load`` is active jobs / slots (0..1), ``gpu_free_bytes`` the
        free VRAM of its GPUs, ``last_dispatch`` the state's sequence number of its last
        dispatch (0 = never)."""
        ...

    def describe(self, key: PlacementKey) -> dict[str, Any]:
        """The key as a small dict for explanations."""
        ...


class LeastLoadedPlacement:
    """Fewest active jobs per slot; tie-break most free VRAM."""

    name = "least-loaded"

    def __repr__(self) -> str:
        return "LeastLoadedPlacement()"

    def key(
        self, load: float, gpu_free_bytes: int, last_dispatch: int, worker_id: str
    ) -> PlacementKey:
        """``(load, -gpu_free_bytes, worker_id)``."""
        return (load, -gpu_free_bytes, worker_id)

    def describe(self, key: PlacementKey) -> dict[str, Any]:
        """``{"load", "gpu_free_bytes"}``."""
        return {"load": key[0], "gpu_free_bytes": -key[1]}


class MostVramFreePlacement:
    """Most free VRAM on the worker's GPUs first."""

    name = "most-vram-free"

    def __repr__(self) -> str:
        return "MostVramFreePlacement()"

    def key(
        self, load: float, gpu_free_bytes: int, last_dispatch: int, worker_id: str
    ) -> PlacementKey:
        """``(-gpu_free_bytes, load, worker_id)``."""
        return (-gpu_free_bytes, load, worker_id)

    def describe(self, key: PlacementKey) -> dict[str, Any]:
        """``{"gpu_free_bytes", "load"}``."""
        return {"gpu_free_bytes": -key[0], "load": key[1]}


class RoundRobinPlacement:
    """Workers of a model take turns: least recently dispatched to first."""

    name = "round-robin"

    def __repr__(self) -> str:
        return "RoundRobinPlacement()"

    def key(
        self, load: float, gpu_free_bytes: int, last_dispatch: int, worker_id: str
    ) -> PlacementKey:
        """``(last_dispatch, worker_id)``."""
        return (last_dispatch, worker_id)

    def describe(self, key: PlacementKey) -> dict[str, Any]:
        """``{"last_dispatch_seq"}``."""
        return {"last_dispatch_seq": key[0]}
