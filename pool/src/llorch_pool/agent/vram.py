"""VRAM accounting per GPU: what each worker reserved, what is left.

The ledger is the pool's own bookkeeping: a worker reserves its model's declared VRAM on one
GPU when it is started and releases it when it stops or its process dies. Where the GPU can
be measured (``nvidia-smi``), the free figure is the smaller of the accounted and the measured
one, so memory taken by processes the pool does not know about counts too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llorch_pool.errors import InsufficientVram, ModelIncompatible

__all__ = ["Reservation", "VramLedger"]


@dataclass(frozen=True, slots=True)
class Reservation:
    """VRAM held by one worker on one GPU."""

    worker_id: str
    gpu_id: str
    vram_bytes: int


class VramLedger:
    """Reservations of VRAM per GPU. Invariant: on every GPU the reserved sum never exceeds
    the total (except for ``force``-d reservations of engines the pool does not control)."""

    def __init__(self, totals: Mapping[str, int]) -> None:
        for gpu_id, total in totals.items():
            if total < 0:
                raise ValueError(f"gpu {gpu_id}: total VRAM must be >= 0, got {total}")
        self._totals = dict(totals)
        self._measured_free: dict[str, int] = {}
        self._reservations: dict[str, Reservation] = {}

    @property
    def gpu_ids(self) -> list[str]:
        """GPU ids in configuration order."""
        return list(self._totals)

    def total(self, gpu_id: str) -> int:
        """Total VRAM of ``gpu_id`` (KeyError if unknown)."""
        return self._totals[gpu_id]

    def reserved(self, gpu_id: str) -> int:
        """Bytes reserved on ``gpu_id``."""
        return sum(r.vram_bytes for r in self._reservations.values() if r.gpu_id == gpu_id)

    def free(self, gpu_id: str) -> int:
        """Bytes free on ``gpu_id``: total minus reservations, capped by the measured free
        figure when there is one; never negative."""
        free = self._totals[gpu_id] - self.reserved(gpu_id)
        measured = self._measured_free.get(gpu_id)
        if measured is not None:
            free = min(free, measured)
        return max(0, free)

    def set_measured(self, gpu_id: str, total: int, free: int | None) -> None:
        """Record a measurement of ``gpu_id`` (``free=None`` forgets the measured figure)."""
        self._totals[gpu_id] = max(0, total)
        if free is None:
            self._measured_free.pop(gpu_id, None)
        else:
            self._measured_free[gpu_id] = max(0, free)

    def check(self, model_ref: str, gpu_id: str, vram_bytes: int) -> None:
        """Raise :class:`ModelIncompatible` if the model can never fit ``gpu_id`` and
        :class:`InsufficientVram` if it does not fit now."""
        total = self._totals[gpu_id]
        if vram_bytes > total:
            raise ModelIncompatible(
                model_ref,
                f"needs {vram_bytes} bytes of VRAM, more than gpu {gpu_id} has ({total})",
                gpu_id=gpu_id,
                vram_needed_bytes=vram_bytes,
                vram_total_bytes=total,
            )
        free = self.free(gpu_id)
        if vram_bytes > free:
            raise InsufficientVram(model_ref, gpu_id, vram_bytes, free)

    def reserve(
        self,
        worker_id: str,
        model_ref: str,
        gpu_id: str,
        vram_bytes: int,
        *,
        force: bool = False,
    ) -> Reservation:
        """Reserve ``vram_bytes`` on ``gpu_id`` for ``worker_id`` (see :meth:`check`).
        ``force`` skips the check (for engines that already run outside the pool's control)."""
        if worker_id in self._reservations:
            raise ValueError(f"worker {worker_id} already holds a reservation")
        if not force:
            self.check(model_ref, gpu_id, vram_bytes)
        reservation = Reservation(worker_id, gpu_id, vram_bytes)
        self._reservations[worker_id] = reservation
        return reservation

    def release(self, worker_id: str) -> Reservation | None:
        """Give back what ``worker_id`` held (idempotent)."""
        return self._reservations.pop(worker_id, None)

    def holds(self, worker_id: str) -> bool:
        """True if ``worker_id`` holds a reservation."""
        return worker_id in self._reservations
