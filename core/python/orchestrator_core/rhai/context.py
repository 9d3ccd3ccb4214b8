"""The Rhai ``ctx`` of one policy call: the snapshot's map plus what the prelude needs.

:meth:`SchedulingSnapshot.to_ctx <orchestrator_core.scheduling.SchedulingSnapshot.to_ctx>`
builds the map of docs/design/rhai-policies.md (queue windowed per order class, with counts in
``queue_info``; pools with GPUs and workers; catalog; tenants; metrics; config; ``now`` in
Unix milliseconds). :class:`ContextBuilder` adds:

* ``free_workers`` — a map ``model_ref -> [worker, ...]`` of the workers that can take a job
  now (ready, a free slot, pool not offline), least-loaded first and online pools before
  degraded ones (the built-in least-loaded order). Each entry is the ctx worker map plus
  ``pool_status``, ``gpu_free_bytes`` (free VRAM of its GPUs), ``gpu_names`` and ``load``
  (active jobs per slot). Worker-selection helpers read it instead of scanning every pool.
* ``gpus`` — every GPU as one flat list: the ctx GPU map plus ``pool_id``, ``pool_status``,
  ``pool_models`` (what its pool may load; empty = anything), ``idle_vram_bytes`` (VRAM of
  the idle workers on it, which an eviction could free now) and ``live_vram_bytes`` (VRAM
  of its ready or busy workers, which draining them could free).
* ``live_slots`` — a map ``model_ref -> slots`` of ready, busy and starting workers on pools
  that are not offline (models without any are absent).
* ``platform`` — the built-in policy's decision map (without explanation) when the policy's
  source names ``platform_schedule``, ``plan_delegate`` or ``plan_decision`` (see
  :func:`needs_platform_decision`); else ``()``.
* ``plan`` — an empty plan that the ``plan_*`` helpers fill (:func:`empty_plan`).

Rhai size-checks a map on every native method call on it and on every top-level property
set: the prelude keeps such calls off ``ctx`` itself (``ctx.free_workers.contains(m)`` is
cheap, ``"x" in ctx`` walks the whole ctx). The per-pool parts are cached until the pool
changes (the scheduling package caches each pool's ctx map per pool version, so an
unchanged pool hands back the same ``workers`` list).
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator_core.scheduling.decisions import Decision, decision_to_dict
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot

__all__ = ["PLATFORM_HELPERS", "ContextBuilder", "empty_plan", "needs_platform_decision"]

PLATFORM_HELPERS = ("platform_schedule", "plan_delegate", "plan_decision")
"""Prelude helpers that read the built-in decision (``ctx.platform``)."""

_PLATFORM_RE = re.compile(r"\b(" + "|".join(PLATFORM_HELPERS) + r")\b")


def needs_platform_decision(source: str) -> bool:
    """Whether Rhai ``source`` names one of :data:`PLATFORM_HELPERS` anywhere (code,
    strings or comments): only then is the built-in decision computed before each call."""
    return _PLATFORM_RE.search(source) is not None


def empty_plan() -> dict[str, Any]:
    """The empty plan of ``ctx.plan`` (the same map the prelude's ``plan_start()`` makes)."""
    return {
        "actions": [],
        "taken": {},
        "started": {},
        "wanted": {},
        "full": {},
        "delegated": 0,
        "platform_jobs": {},
        "platform_indexed": False,
        "reason": None,
        "all_delegated": True,
    }


_Entries = list[tuple[str, tuple[Any, ...], dict[str, Any]]]


class ContextBuilder:
    """Builds the ctx of each call. ``window``: jobs of each order class in ``ctx.queue``
    (``None``: the configuration's ``scheduler.snapshot_window``). Not thread-safe: one per
    scheduler, and a scheduler decides one snapshot at a time."""

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 0:
            raise ValueError(f"window: must be >= 0, got {window}")
        self.window = window
        # pool id -> (workers list, gpus list, status, free-worker entries, GPU entries)
        self._cache: dict[str, tuple[object, object, str, _Entries, list[dict[str, Any]]]] = {}

    def build(
        self, snapshot: SchedulingSnapshot, platform: Decision | None = None
    ) -> dict[str, Any]:
        """The ctx of ``snapshot``; with ``platform`` (the built-in decision) if given."""
        ctx = dict(snapshot.to_ctx(self.window))
        merged: _Entries = []
        gpus: list[dict[str, Any]] = []
        seen: set[str] = set()
        for pool in ctx["pools"]:
            pool_id = pool["id"]
            seen.add(pool_id)
            cached = self._cache.get(pool_id)
            if (
                cached is None
                or cached[0] is not pool["workers"]
                or cached[1] is not pool["gpus"]
                or cached[2] != pool["status"]
            ):
                cached = (
                    pool["workers"],
                    pool["gpus"],
                    pool["status"],
                    _pool_entries(pool),
                    _gpu_entries(pool),
                )
                self._cache[pool_id] = cached
            merged.extend(cached[3])
            gpus.extend(cached[4])
        for gone in [p for p in self._cache if p not in seen]:
            del self._cache[gone]
        merged.sort(key=lambda e: (e[0], e[1]))
        free: dict[str, list[dict[str, Any]]] = {}
        for model_ref, _key, entry in merged:
            free.setdefault(model_ref, []).append(entry)
        ctx["free_workers"] = free
        ctx["gpus"] = gpus
        live = {}
        for model_ref in ctx["catalog"]["models"]:
            slots = snapshot.live_slots(model_ref)
            if slots:
                live[model_ref] = slots
        ctx["live_slots"] = live
        ctx["platform"] = (
            None if platform is None else decision_to_dict(platform, explanation=False)
        )
        ctx["plan"] = empty_plan()
        return ctx


def _share(worker: dict[str, Any]) -> int:
    ids = worker["gpu_ids"]
    return int(worker["vram_bytes"]) // len(ids) if ids else 0


def _gpu_entries(pool: dict[str, Any]) -> list[dict[str, Any]]:
    status = pool["status"]
    idle: dict[str, int] = {}
    live: dict[str, int] = {}
    if status != "offline":
        for w in pool["workers"]:
            if w["pending"] or w["status"] not in ("ready", "busy"):
                continue
            for g in w["gpu_ids"]:
                live[g] = live.get(g, 0) + _share(w)
                if w["status"] == "ready" and w["active_jobs"] == 0:
                    idle[g] = idle.get(g, 0) + _share(w)
    return [
        {
            **g,
            "pool_id": pool["id"],
            "pool_status": status,
            "pool_models": list(pool["cached_models"]),
            "idle_vram_bytes": idle.get(g["id"], 0),
            "live_vram_bytes": live.get(g["id"], 0),
        }
        for g in pool["gpus"]
    ]


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
