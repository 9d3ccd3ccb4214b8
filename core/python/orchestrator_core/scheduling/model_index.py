"""ModelIndex: which models exist and how much VRAM a worker of each needs.

The configured catalog, plus what the fleet teaches at run time: the models pools can load
and workers serve (so a model no catalog lists is still known while a pool offers it), and
the largest VRAM figure a pool or worker reported for each model (used when the catalog has
none; it only ever rises, and the models whose figure rose are kept until the fleet re-counts
its workers).
"""

from __future__ import annotations

from collections import Counter

from orchestrator_core.scheduling.catalog import ModelCatalog, ModelInfo

__all__ = ["ModelIndex"]


class ModelIndex:
    """Catalog, run-time model names and learned VRAM; O(1) per call except the listings."""

    def __init__(self, catalog: ModelCatalog) -> None:
        self.catalog = catalog
        self._learned_vram: dict[str, int] = {}
        self._relearned: set[str] = set()
        self.pool_models: Counter[str] = Counter()
        """Pools listing each model (as loadable)."""
        self.worker_models: Counter[str] = Counter()
        """Workers serving each model."""

    def resolve(self, name: str) -> str:
        """Canonical model ref of a ref or alias."""
        return self.catalog.resolve(name)

    def vram(self, model_ref: str) -> int:
        """VRAM a worker of this model needs: the catalog's figure, else the most a pool or
        worker reported for it, else 0 (unknown)."""
        info = self.catalog.get(model_ref)
        if info is not None and info.vram_bytes > 0:
            return info.vram_bytes
        return self._learned_vram.get(self.catalog.resolve(model_ref), 0)

    def learn(self, ref: str, vram_bytes: int) -> bool:
        """Keep ``vram_bytes`` as the learned VRAM of canonical model ``ref`` if larger than
        before; returns whether it was. When that changes :meth:`vram`, ``ref`` is kept for
        :meth:`take_relearned`."""
        if vram_bytes <= self._learned_vram.get(ref, 0):
            return False
        before = self.vram(ref)
        self._learned_vram[ref] = vram_bytes
        if self.vram(ref) != before:
            self._relearned.add(ref)
        return True

    def take_relearned(self) -> set[str]:
        """The models whose VRAM figure rose since the last call (then forgotten)."""
        refs, self._relearned = self._relearned, set()
        return refs

    def known(self, model_ref: str) -> bool:
        """Whether the catalog, a pool or a worker knows this model."""
        ref = self.catalog.resolve(model_ref)
        return ref in self.catalog or self.pool_models[ref] > 0 or self.worker_models[ref] > 0

    def info(self, model_ref: str) -> ModelInfo | None:
        """Catalog entry (with learned VRAM if the catalog had none), or ``None`` if unknown."""
        ref = self.catalog.resolve(model_ref)
        info = self.catalog.get(ref)
        if info is None:
            if not self.known(ref):
                return None
            return ModelInfo(ref, vram_bytes=self.vram(ref))
        if info.vram_bytes == 0 and ref in self._learned_vram:
            return ModelInfo(
                ref, info.aliases, self._learned_vram[ref], info.context_length, info.family
            )
        return info

    def names(self) -> list[str]:
        """Every model the catalog, the pools or the workers know, sorted."""
        names = {m.model_ref for m in self.catalog}
        names.update(m for m, n in self.pool_models.items() if n > 0)
        names.update(m for m, n in self.worker_models.items() if n > 0)
        return sorted(names)
