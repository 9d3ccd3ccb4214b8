"""The model catalog: canonical model refs, aliases, VRAM needed and context length.

Built from ``[[models]]`` of the configuration (:meth:`ModelCatalog.from_config`). Pools add
to what the scheduler knows at run time (the models they report as loadable, the VRAM their
workers use); :class:`~orchestrator_core.scheduling.state.ClusterState` keeps that part.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator_core.config import OrchestratorConfig

__all__ = ["ModelCatalog", "ModelInfo"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model: its canonical ref, aliases, VRAM needed (0 = unknown), context length."""

    model_ref: str
    aliases: tuple[str, ...] = ()
    vram_bytes: int = 0
    context_length: int | None = None
    family: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_ctx(self) -> dict[str, Any]:
        """The Rhai ``ctx.catalog.models[ref]`` map of this model."""
        return {
            "model_ref": self.model_ref,
            "aliases": list(self.aliases),
            "vram_required_bytes": self.vram_bytes,
            "context_length": self.context_length,
            "family": self.family,
        }


class ModelCatalog:
    """Models keyed by canonical ref, with alias resolution. Immutable once built."""

    __slots__ = ("_by_name", "_models")

    def __init__(self, models: Iterable[ModelInfo] = ()) -> None:
        self._models: dict[str, ModelInfo] = {}
        self._by_name: dict[str, str] = {}
        for model in models:
            if model.model_ref in self._by_name:
                raise ValueError(f"model {model.model_ref!r} is listed twice in the catalog")
            self._models[model.model_ref] = model
            self._by_name[model.model_ref] = model.model_ref
        for model in self._models.values():
            for alias in model.aliases:
                if alias in self._by_name and self._by_name[alias] != model.model_ref:
                    raise ValueError(f"alias {alias!r} names two models")
                self._by_name[alias] = model.model_ref

    @classmethod
    def from_config(cls, config: OrchestratorConfig) -> ModelCatalog:
        """The catalog of ``config.models`` (the config has already checked name clashes)."""
        return cls(
            ModelInfo(
                model_ref=m.model_ref,
                aliases=tuple(m.aliases),
                vram_bytes=m.vram_bytes,
                context_length=m.context_length,
                family=m.family,
            )
            for m in config.models
        )

    def resolve(self, name: str) -> str:
        """The canonical ref of ``name`` (a ref or an alias); unknown names map to themselves."""
        return self._by_name.get(name, name)

    def get(self, name: str) -> ModelInfo | None:
        """The model named ``name`` (ref or alias), or ``None``."""
        ref = self._by_name.get(name)
        return None if ref is None else self._models[ref]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def aliases(self) -> dict[str, str]:
        """Every alias mapped to its canonical ref."""
        return {name: ref for name, ref in self._by_name.items() if name != ref}
