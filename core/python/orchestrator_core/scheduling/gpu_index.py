"""GpuIndex: the fleet's GPUs grouped for placement, eviction and drain searches.

GPUs are grouped by (pool status, models the pool can load); each group keeps its GPUs
sorted by free VRAM, by the VRAM free once its idle workers are evicted, and by the VRAM
free once its ready or busy workers stop (what draining could free). A best-fit start,
an eviction plan and a drain plan each bisect one of those lists at the VRAM they need, so
they look only at GPUs that could do.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any, Literal

from orchestrator_core.pools import PoolStatus
from orchestrator_core.scheduling.records import GpuGroup, GpuRecord

__all__ = ["GpuIndex", "GpuSort"]

GpuSort = Literal["free", "reclaimable", "drainable"]
"""Which VRAM figure a GPU search sorts by: free now, free once idle workers are evicted,
free once ready or busy workers stop."""

GpuEntry = tuple[int, str, str]  # (bytes, pool_id, gpu_id)


class GpuIndex:
    """GPU groups and their sorted lists; O(log n) per GPU change."""

    def __init__(self) -> None:
        self._groups: dict[tuple[PoolStatus, frozenset[str]], GpuGroup] = {}
        self._cache: dict[tuple[str, PoolStatus], list[GpuGroup]] = {}

    def __bool__(self) -> bool:
        return bool(self._groups)

    def add(self, gpu: GpuRecord, status: PoolStatus, models: frozenset[str]) -> None:
        """File ``gpu`` under the group of its pool's status and loadable models."""
        key = (status, models)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = GpuGroup(status, models)
            self._cache.clear()
        gpu.c_group = group
        gpu.c_free = gpu.free()
        gpu.c_reclaim = gpu.free_after(gpu.idle)
        gpu.c_drainable = gpu.free_after(gpu.live)
        group.free_idx.add((gpu.c_free, gpu.pool_id, gpu.gpu_id))
        group.reclaim_idx.add((gpu.c_reclaim, gpu.pool_id, gpu.gpu_id))
        group.drain_idx.add((gpu.c_drainable, gpu.pool_id, gpu.gpu_id))
        group.totals.add(gpu.total)

    def remove(self, gpu: GpuRecord) -> None:
        """Take ``gpu`` out of its group (if filed)."""
        group = gpu.c_group
        if group is None:
            return
        group.free_idx.remove((gpu.c_free, gpu.pool_id, gpu.gpu_id))
        group.reclaim_idx.remove((gpu.c_reclaim, gpu.pool_id, gpu.gpu_id))
        group.drain_idx.remove((gpu.c_drainable, gpu.pool_id, gpu.gpu_id))
        group.totals.remove(gpu.total)
        gpu.c_group = None
        if not group.totals:
            del self._groups[group.key]
            self._cache.clear()

    def rekey(self, gpu: GpuRecord) -> bool:
        """Re-sort ``gpu`` after its VRAM figures changed; returns whether its free VRAM
        changed (placements that look at free VRAM must re-key the workers on it)."""
        group = gpu.c_group
        if group is None:
            return False
        pool_id, gpu_id = gpu.pool_id, gpu.gpu_id
        reclaim = gpu.free_after(gpu.idle)
        if reclaim != gpu.c_reclaim:
            group.reclaim_idx.remove((gpu.c_reclaim, pool_id, gpu_id))
            group.reclaim_idx.add((reclaim, pool_id, gpu_id))
            gpu.c_reclaim = reclaim
        drainable = gpu.free_after(gpu.live)
        if drainable != gpu.c_drainable:
            group.drain_idx.remove((gpu.c_drainable, pool_id, gpu_id))
            group.drain_idx.add((drainable, pool_id, gpu_id))
            gpu.c_drainable = drainable
        free = gpu.free()
        if free == gpu.c_free:
            return False
        group.free_idx.remove((gpu.c_free, pool_id, gpu_id))
        group.free_idx.add((free, pool_id, gpu_id))
        gpu.c_free = free
        return True

    def groups_for(self, model_ref: str, status: PoolStatus) -> list[GpuGroup]:
        """Groups of pools in ``status`` that can load ``model_ref`` (cached)."""
        key = (model_ref, status)
        groups = self._cache.get(key)
        if groups is None:
            groups = [
                g for g in self._groups.values() if g.status is status and g.can_load(model_ref)
            ]
            self._cache[key] = groups
        return groups

    def runs(
        self, model_ref: str, status: PoolStatus, by: GpuSort, at_least: int
    ) -> list[Iterator[GpuEntry]]:
        """One ascending run per group of pools in ``status`` that can load ``model_ref``:
        the group's ``(bytes, pool_id, gpu_id)`` entries sorted ``by`` a VRAM figure,
        starting at the first with ``at_least`` bytes (groups with none are left out)."""
        out: list[Iterator[GpuEntry]] = []
        for group in self.groups_for(model_ref, status):
            sl: Any = (
                group.free_idx
                if by == "free"
                else group.reclaim_idx
                if by == "reclaimable"
                else group.drain_idx
            )
            start = sl.bisect_left((at_least,))
            if start < len(sl):
                out.append(sl.islice(start))
        return out

    def largest(
        self, model_ref: str | None = None, statuses: Collection[PoolStatus] | None = None
    ) -> int | None:
        """Total VRAM of the largest GPU on a pool in one of ``statuses`` (default: any)
        that can load ``model_ref`` (default: any model); ``None`` if there is none."""
        best: int | None = None
        for group in self._groups.values():
            if statuses is not None and group.status not in statuses:
                continue
            if model_ref is not None and not group.can_load(model_ref):
                continue
            top = int(group.totals[-1])
            if best is None or top > best:
                best = top
        return best
