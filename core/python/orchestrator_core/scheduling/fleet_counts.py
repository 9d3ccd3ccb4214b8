"""FleetCounts: what the fleet's records add up to, re-counted one worker at a time.

Each worker record remembers what is counted for it (its ``c_*`` fields), so any change to
a worker re-counts that worker alone (:meth:`FleetCounts.refresh`), in O(log n):

* live slots per model: ready, busy and starting workers on pools not offline (a starting
  worker is capacity on its way, so the same demand does not start a second one);
* workers by effective status;
* per GPU, the VRAM allocated to its workers, held by idle (evictable) workers and by ready
  or busy (drainable) ones — re-sorting the GPU in the
  :class:`~orchestrator_core.scheduling.gpu_index.GpuIndex`;
* the free-worker index: per model, the workers with a free slot sorted by the placement's
  key, workers of online pools apart from those of degraded pools.

When a model gains or loses a free or live worker, the watchers hear of it (the demand
index, which re-files the model as dispatchable, cold or scaling).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from orchestrator_core.pools import PoolStatus, WorkerStatus
from orchestrator_core.scheduling.gpu_index import GpuIndex
from orchestrator_core.scheduling.indexes import KeyedIndex
from orchestrator_core.scheduling.model_index import ModelIndex
from orchestrator_core.scheduling.placement import Placement, PlacementKey
from orchestrator_core.scheduling.records import GpuRecord, PoolRecord, WorkerRecord
from orchestrator_core.scheduling.views import vram_share

__all__ = ["DEGRADED", "ONLINE", "FleetCounts"]

ONLINE, DEGRADED = 0, 1
"""The two halves of a model's free-worker index: workers on online, on degraded pools."""
_LIVE = (WorkerStatus.READY, WorkerStatus.BUSY, WorkerStatus.STARTING)

FreeIndex = tuple[KeyedIndex[PlacementKey], KeyedIndex[PlacementKey]]


class FleetCounts:
    """Counts and indexes over the fleet's records (see the module docstring). The record
    dicts are the fleet index's own, shared."""

    def __init__(
        self,
        models: ModelIndex,
        placement: Placement,
        pools: dict[str, PoolRecord],
        workers: dict[str, WorkerRecord],
    ) -> None:
        self.models = models
        self.placement = placement
        self.pools = pools
        self.workers = workers
        self.gpus = GpuIndex()
        self.live: Counter[str] = Counter()
        """Live worker slots per model (read-only outside this class)."""
        self.status_counts: Counter[WorkerStatus] = Counter()
        """Workers by effective status (read-only outside this class)."""
        self._free: dict[str, FreeIndex] = {}
        self._watchers: list[Callable[[str], None]] = []

    def watch(self, on_capacity: Callable[[str], None]) -> None:
        """Call ``on_capacity(model_ref)`` whenever a model gains or loses a free or live
        worker slot."""
        self._watchers.append(on_capacity)

    def set_placement(self, placement: Placement) -> None:
        """Re-sort the free-worker index for another placement."""
        self.placement = placement
        for worker in self.workers.values():
            if worker.c_slot is not None:
                self._free_index(worker.model_ref)[worker.c_slot].set(
                    worker.worker_id, self._placement_key(worker, worker.active())
                )

    def refresh(self, worker: WorkerRecord, *, present: bool = True) -> None:
        """Recompute a worker's contributions to every index and sum (``present=False``:
        take them all out)."""
        rec = self.pools.get(worker.pool_id)
        pool_status = PoolStatus.OFFLINE if rec is None else rec.status
        usable = present and pool_status is not PoolStatus.OFFLINE
        status = worker.status() if present else None
        active = worker.active() if present else 0
        ready = status is WorkerStatus.READY
        idle = usable and ready and active == 0 and not worker.pending and worker.own_active == 0
        drain = usable and status in (WorkerStatus.READY, WorkerStatus.BUSY) and not worker.pending
        old_model = worker.c_model
        live = worker.max_concurrency if usable and status in _LIVE else 0
        live_changed = self._count(worker, status, live)
        if rec is not None:
            rec.version += 1  # invalidates the pool's cached Rhai ctx map
        alloc = present and not worker.stopping
        share = self.share(worker) if present else 0
        self._count_vram(worker, rec, alloc=alloc, idle=idle, drain=drain, share=share)
        free = usable and ready and active < worker.max_concurrency
        slot = (ONLINE if pool_status is PoolStatus.ONLINE else DEGRADED) if free else None
        free_changed = self._file_free(worker, slot, active)
        model = worker.model_ref
        for m in {model, old_model}:
            if live_changed or free_changed or m != old_model:
                for watcher in self._watchers:
                    watcher(m)

    def _count(self, worker: WorkerRecord, status: WorkerStatus | None, live: int) -> bool:
        """Count the worker's status and live slots; returns whether its live slots (or
        model) changed."""
        counts = self.status_counts
        if worker.c_status is not None:
            counts[worker.c_status] -= 1
        if status is not None:
            counts[status] += 1
        worker.c_status = status
        model, old_model = worker.model_ref, worker.c_model
        if live == worker.c_live and model == old_model:
            return False
        self.live[old_model] -= worker.c_live
        self.live[model] += live
        worker.c_live = live
        return True

    def _count_vram(
        self,
        worker: WorkerRecord,
        rec: PoolRecord | None,
        *,
        alloc: bool,
        idle: bool,
        drain: bool,
        share: int,
    ) -> None:
        """Count the worker's VRAM share as allocated, idle and drainable on its GPUs."""
        if (
            alloc == worker.c_alloc
            and idle == worker.c_idle
            and drain == worker.c_drain
            and share == worker.c_share
        ):
            return
        gpus = [] if rec is None else [rec.gpus.get(g) for g in worker.gpu_ids]
        old = worker.c_share
        for gpu in gpus:
            if gpu is None:
                continue
            gpu.allocated += (share if alloc else 0) - (old if worker.c_alloc else 0)
            gpu.idle += (share if idle else 0) - (old if worker.c_idle else 0)
            gpu.live += (share if drain else 0) - (old if worker.c_drain else 0)
        worker.c_alloc, worker.c_idle, worker.c_drain = alloc, idle, drain
        worker.c_share = share
        for gpu in gpus:
            if gpu is not None:
                self.rekey_gpu(gpu)

    def _file_free(self, worker: WorkerRecord, slot: int | None, active: int) -> bool:
        """File the worker in its model's free-worker index (``slot``: online or degraded
        half, ``None``: not free); returns whether the model it was counted under gained
        or lost its last free worker."""
        model, old_model = worker.model_ref, worker.c_model
        if worker.c_slot is None and slot is None:
            worker.c_model = model
            return False
        old_idx = self._free_index(old_model)
        free_before = len(old_idx[0]) + len(old_idx[1]) > 0
        if worker.c_slot is not None and (worker.c_slot != slot or model != old_model):
            old_idx[worker.c_slot].set(worker.worker_id, None)
        if slot is not None:
            self._free_index(model)[slot].set(worker.worker_id, self._placement_key(worker, active))
        worker.c_slot = slot
        worker.c_model = model
        return free_before != (len(old_idx[0]) + len(old_idx[1]) > 0)

    def rekey_gpu(self, gpu: GpuRecord) -> None:
        """Re-sort a GPU whose VRAM figures changed (and the free workers on it)."""
        if not self.gpus.rekey(gpu):
            return
        # placements that look at free VRAM re-key the free workers on this GPU
        for wid in gpu.workers:
            worker = self.workers.get(wid)
            if worker is not None and worker.c_slot is not None:
                self._free_index(worker.model_ref)[worker.c_slot].set(
                    wid, self._placement_key(worker, worker.active())
                )

    def _free_index(self, model_ref: str) -> FreeIndex:
        idx = self._free.get(model_ref)
        if idx is None:
            idx = self._free[model_ref] = (KeyedIndex(), KeyedIndex())
        return idx

    def _placement_key(self, worker: WorkerRecord, active: int) -> PlacementKey:
        return self.placement.key(
            active / worker.max_concurrency,
            self.gpu_free_of(worker),
            worker.last_dispatch,
            worker.worker_id,
        )

    # -- reads -----------------------------------------------------------------------------

    def vram(self, worker: WorkerRecord) -> int:
        """VRAM a worker holds: its own report, else its model's figure."""
        return worker.vram_bytes if worker.vram_bytes > 0 else self.models.vram(worker.model_ref)

    def share(self, worker: WorkerRecord) -> int:
        """VRAM a worker holds on each of its GPUs."""
        return vram_share(self.vram(worker), len(worker.gpu_ids))

    def gpu_free_of(self, worker: WorkerRecord) -> int:
        """Free VRAM of a worker's GPUs (what placements weigh)."""
        rec = self.pools.get(worker.pool_id)
        if rec is None:
            return 0
        total = 0
        for gid in worker.gpu_ids:
            gpu = rec.gpus.get(gid)
            if gpu is not None:
                total += gpu.free()
        return total

    def free_lists(self, model_ref: str) -> tuple[Any, Any] | None:
        """A model's free workers, online and degraded halves: ``(placement key, worker
        id)``, best first; ``None`` if the model never had one."""
        idx = self._free.get(model_ref)
        return None if idx is None else (idx[0].sl, idx[1].sl)

    def has_free_worker(self, model_ref: str) -> bool:
        """Whether a worker of the model has a free slot."""
        idx = self._free.get(model_ref)
        return idx is not None and (len(idx[0]) > 0 or len(idx[1]) > 0)

    def free_count(self, model_ref: str) -> int:
        """Workers of the model with a free slot."""
        idx = self._free.get(model_ref)
        return 0 if idx is None else len(idx[0]) + len(idx[1])

    def live_slots(self, model_ref: str) -> int:
        """Slots of the model's ready, busy and starting workers on pools not offline."""
        return self.live[model_ref]
