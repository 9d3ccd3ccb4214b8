"""The Rhai ``ctx`` of one policy call: the snapshot's map plus what the prelude needs.

:meth:`SchedulingSnapshot.to_ctx <orchestrator_core.scheduling.SchedulingSnapshot.to_ctx>`
builds the map of RHAI_RUNTIME.md (queue windowed per order class, with counts in
``queue_info``; pools with GPUs and workers; catalog; tenants; metrics; config; ``now`` in
Unix milliseconds). :class:`ContextBuilder` adds two keys:

* ``free_workers`` — a map ``model_ref -> [worker, ...]`` of the workers that can take a job
  now (ready, a free slot, pool not offline), least-loaded first and online pools before
  degraded ones (the built-in least-loaded order). Each entry is the ctx worker map plus
  ``pool_status``, ``gpu_free_bytes`` (free VRAM of its GPUs), ``gpu_names`` and ``load``
  (active jobs per slot). Worker-selection helpers read it instead of scanning every pool.
* ``platform`` — the built-in policy's decision map (without explanation), only when the
  policy's source names ``platform_schedule``, ``plan_delegate`` or ``plan_decision`` (see
  :func:`needs_platform_decision`).

The free-worker entries of a pool are cached until the pool changes (the scheduling
package caches each pool's ctx map per pool version, so an unchanged pool hands back the
same ``workers`` list).
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator_core.scheduling.decisions import Decision, decision_to_dict
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

__all__ = ["PLATFORM_HELPERS", "ContextBuilder", "needs_platform_decision"]

PLATFORM_HELPERS = ("platform_schedule", "plan_delegate", "plan_decision")
"""Prelude helpers that read the built-in decision (``ctx.platform``)."""

_PLATFORM_RE = re.compile(r"\b(" + "|".join(PLATFORM_HELPERS) + r")\b")


def needs_platform_decision(source: str) -> bool:
    """Whether Rhai ``source`` names one of :data:`PLATFORM_HELPERS` anywhere (code,
    strings or comments): only then is the built-in decision computed before each call."""
    return _PLATFORM_RE.search(source) is not None


_Entries = list[tuple[str, tuple[Any, ...], dict[str, Any]]]


class ContextBuilder:
    """Builds the ctx of each call. ``window``: jobs of each order class in ``ctx.queue``
    (``None``: the configuration's ``scheduler.snapshot_window``). Not thread-safe: one per
    scheduler, and a scheduler decides one snapshot at a time."""

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 0:
            raise ValueError(f"window: must be >= 0, got {window}")
        self.window = window
        # pool id -> (workers list, gpus list, status, entries) of the last ctx
        self._cache: dict[str, tuple[object, object, str, _Entries]] = {}

    def build(
        self, snapshot: SchedulingSnapshot, platform: Decision | None = None
    ) -> dict[str, Any]:
        """The ctx of ``snapshot``; with ``platform`` (the built-in decision) if given."""
        ctx = dict(snapshot.to_ctx(self.window))
        ctx["free_workers"] = self._free_workers(ctx["pools"])
        if platform is not None:
            ctx["platform"] = decision_to_dict(platform, explanation=False)
        return ctx

    def _free_workers(self, pools: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        merged: _Entries = []
        seen: set[str] = set()
        for pool in pools:
            pool_id = pool["id"]
            seen.add(pool_id)
            workers, gpus, status = pool["workers"], pool["gpus"], pool["status"]
            cached = self._cache.get(pool_id)
            if (
                cached is not None
                and cached[0] is workers
                and cached[1] is gpus
                and cached[2] == status
            ):
                merged.extend(cached[3])
                continue
            entries = _pool_entries(pool)
            self._cache[pool_id] = (workers, gpus, status, entries)
            merged.extend(entries)
        for gone in [p for p in self._cache if p not in seen]:
            del self._cache[gone]
        merged.sort(key=lambda e: (e[0], e[1]))
        out: dict[str, list[dict[str, Any]]] = {}
        for model_ref, _key, entry in merged:
            out.setdefault(model_ref, []).append(entry)
        return out


def _pool_entries(pool: dict[str, Any]) -> _Entries:
    status = pool["status"]
    if status == "offline":
        return []
    gpus = {g["id"]: g for g in pool["gpus"]}
    entries: _Entries = []
    for w in pool["workers"]:
        if w["status"] != "ready" or w["free_slots"] <= 0:
            continue
        on = [gpus[g] for g in w["gpu_ids"] if g in gpus]
        gpu_free = sum(g["vram_free_bytes"] for g in on)
        load = w["active_jobs"] / w["max_concurrency"]
        entry = {
            **w,
            "pool_status": status,
            "gpu_free_bytes": gpu_free,
            "gpu_names": [g["name"] for g in on],
            "load": load,
        }
        key = (0 if status == "online" else 1, load, -gpu_free, w["id"])
        entries.append((w["model_ref"], key, entry))
    return entries
