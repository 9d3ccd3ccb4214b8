"""Saved scheduling snapshots: a JSON document a policy can be dry-run against.

The format (``"format": "llorch-snapshot/1"``) describes a cluster the way the orchestrator
learns about it — settings, catalog, tenants, pools as they report themselves, queued jobs —
so that :func:`snapshot_from_json` rebuilds a
:class:`~orchestrator_core.scheduling.ClusterState` and takes its snapshot. Times are Unix
seconds, sizes bytes. Every key but ``format`` and ``now`` is optional::

    {
      "format": "llorch-snapshot/1",
      "now": 1760000000.0,
      "settings": {"mode": "home", "ordering": "priority", "fairness": "none",
                   "fairness_weights": {}, "promote_after_s": 300.0,
                   "placement": "least-loaded", "eviction": "lru", "min_idle_s": 0.0,
                   "enforce_quotas": false, "quota_action": "wait", "snapshot_window": 256},
      "models":  [{"model_ref": "llama-3-8b", "aliases": ["llama"], "vram_bytes": 8000000000,
                   "context_length": 8192, "family": "llama"}],
      "tenants": [{"tenant_id": "acme", "weight": 1.0, "max_queued": null, "max_running": 4,
                   "running": 1}],
      "pools":   [{"pool_id": "pool-a", "endpoint": "http://pool-a:9200", "status": "online",
                   "capabilities": ["text-gen"], "models": [], "registered_at": 0.0,
                   "last_heartbeat": 1759999999.0,
                   "gpus": [{"gpu_id": "gpu0", "name": "NVIDIA A100", "vram_total_bytes": ...,
                             "vram_free_bytes": ..., "utilization": 0.3}],
                   "workers": [{"worker_id": "w1", "model_ref": "llama-3-8b",
                                "gpu_ids": ["gpu0"], "status": "ready", "active_jobs": 0,
                                "max_concurrency": 1, "vram_bytes": 8000000000, "uri": "...",
                                "last_used_at": 1759999990.0, "jobs_completed": 12}]}],
      "jobs":    [{"job_id": "job-1", "model_ref": "llama", "priority": "interactive",
                   "tenant_id": "acme", "session_id": null, "created_at": 1759999980.0,
                   "queued_at": 1759999980.0, "attempts": 0, "prompt_hash": "...",
                   "params": {"max_tokens": 256, "temperature": 0.7, "seed": null}}]
    }

``pools`` entries are :class:`~orchestrator_core.pools.PoolInfo` (GPUs
:class:`~orchestrator_core.pools.GpuInfo`, workers
:class:`~orchestrator_core.pools.WorkerInfo`); ``tenants[].running`` is how many jobs the
tenant runs now (they count against ``max_running``); jobs are listed in queue order and
carry no prompt. :func:`snapshot_to_json` writes the document of a live snapshot: worker
statuses and free VRAM are the effective ones (the orchestrator's own corrections folded
in), workers whose start is pending are written as ``starting`` with the id
``pending-start-N``, and a fair-share order's virtual times are recomputed from the
arrival order when the document is read back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator_core.api import field_errors
from orchestrator_core.config import OrchestratorConfig
from orchestrator_core.errors import ConfigInvalid, ErrorCode, OrchestratorError, RequestInvalid
from orchestrator_core.jobs import Job, JobParams, JobStatus, Priority
from orchestrator_core.pools import GpuInfo, PoolInfo, WorkerInfo
from orchestrator_core.scheduling.catalog import ModelCatalog
from orchestrator_core.scheduling.scheduler import build_placement, build_queue_order
from orchestrator_core.scheduling.snapshot import SchedulingSnapshot
from orchestrator_core.scheduling.state import PENDING_PREFIX, ClusterState, TenantQuota

__all__ = [
    "SNAPSHOT_FORMAT",
    "SnapshotInvalid",
    "sample_snapshot",
    "sample_snapshot_json",
    "snapshot_from_json",
    "snapshot_to_json",
]

SNAPSHOT_FORMAT = "llorch-snapshot/1"
"""The value of ``format`` in a snapshot document."""

_PENDING_OUT = "pending-start-"
# A placeholder token for lab/platform snapshots: those modes require tokens in a valid
# configuration, and the rebuilt configuration only serves the ctx summary and the built-in
# fallback — nothing authenticates with it.
_PLACEHOLDER_TOKEN = "snapshot-placeholder-token"  # noqa: S105 - not a secret


class SnapshotInvalid(OrchestratorError):
    """A snapshot document is malformed; ``problems`` names every bad field
    (``pools[0].gpus[1].vram_free_bytes: must be >= 0, got -1``)."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid snapshot: " + "; ".join(problems), details={"problems": problems})


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Settings(_Strict):
    mode: Literal["home", "lab", "platform"] = "home"
    ordering: Literal["fifo", "priority", "fair-share"] = "priority"
    fairness: Literal["none", "tenant", "session"] = "none"
    fairness_weights: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    promote_after_s: Annotated[float, Field(gt=0)] | None = 300.0
    placement: Literal["least-loaded", "most-vram-free", "round-robin"] = "least-loaded"
    eviction: Literal["lru", "lfu", "manual"] = "lru"
    min_idle_s: Annotated[float, Field(ge=0)] = 0.0
    enforce_quotas: bool = False
    quota_action: Literal["wait", "reject"] = "wait"
    snapshot_window: Annotated[int, Field(ge=1)] = 256


class _Model(_Strict):
    model_ref: Annotated[str, Field(min_length=1)]
    aliases: list[str] = Field(default_factory=list)
    vram_bytes: Annotated[int, Field(ge=0)] = 0
    context_length: Annotated[int, Field(ge=1)] | None = None
    family: str = ""


class _Tenant(_Strict):
    tenant_id: str
    weight: Annotated[float, Field(gt=0)] = 1.0
    max_queued: Annotated[int, Field(ge=0)] | None = None
    max_running: Annotated[int, Field(ge=0)] | None = None
    running: Annotated[int, Field(ge=0, le=1_000_000)] = 0


class _Params(_Strict):
    max_tokens: Annotated[int, Field(ge=1)] = 16
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = Field(default_factory=list)
    seed: Annotated[int, Field(ge=0)] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class _Job(_Strict):
    job_id: Annotated[str, Field(min_length=1, max_length=256)]
    model_ref: Annotated[str, Field(min_length=1)]
    priority: Literal["interactive", "batch"] = "interactive"
    tenant_id: str | None = None
    session_id: str | None = None
    created_at: float | None = None
    queued_at: float = 0.0
    attempts: Annotated[int, Field(ge=0)] = 0
    prompt_hash: str = ""
    params: _Params = Field(default_factory=_Params)


class _Document(_Strict):
    format: Literal["llorch-snapshot/1"]
    now: float
    settings: _Settings = Field(default_factory=_Settings)
    models: list[_Model] = Field(default_factory=list)
    tenants: list[_Tenant] = Field(default_factory=list)
    pools: list[dict[str, Any]] = Field(default_factory=list)  # PoolInfo, checked one by one
    jobs: list[_Job] = Field(default_factory=list)


# -- reading -------------------------------------------------------------------------------


def snapshot_from_json(data: str | bytes | Mapping[str, Any]) -> SchedulingSnapshot:
    """Rebuild the cluster a snapshot document describes and take its snapshot at ``now``.

    ``data`` is the JSON text or the decoded object. The snapshot's state carries a
    configuration made from ``settings``, ``models`` and ``tenants`` (``state.config``), so
    :func:`~orchestrator_core.scheduling.builtin_scheduler_from_config` gives the matching
    built-in scheduler. Raises :class:`SnapshotInvalid` naming every bad field.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise SnapshotInvalid([f"not valid JSON: {exc}"]) from None
    if not isinstance(data, Mapping):
        raise SnapshotInvalid([f"must be a JSON object, got {type(data).__name__}"])
    problems: list[str] = []
    try:
        doc = _Document.model_validate(dict(data))
    except ValidationError as exc:
        problems = [e.message for e in field_errors(exc, _Document)]
        raise SnapshotInvalid(problems) from None
    pools: list[PoolInfo] = []
    for i, raw in enumerate(doc.pools):
        pool = _pool(raw, f"pools[{i}]", problems)
        if pool is not None:
            pools.append(pool)
    problems.extend(_duplicates(doc, pools))
    if problems:
        raise SnapshotInvalid(problems)
    config = _config(doc)
    state = ClusterState(
        order=build_queue_order(config),
        placement=build_placement(config),
        catalog=ModelCatalog.from_config(config),
        tenants=[
            TenantQuota(t.tenant_id, t.weight, t.max_queued, t.max_running)
            for t in doc.tenants
            if t.tenant_id
        ],
        enforce_quotas=doc.settings.enforce_quotas,
        quota_action=doc.settings.quota_action,
        config=config,
    )
    for tenant in doc.tenants:
        for i in range(tenant.running):
            # Jobs running now, known only by count: they use the tenant's quota. Their
            # ids start with "~", which no real job id contains.
            job = Job(
                job_id=f"~running-{tenant.tenant_id}-{i}",
                model_ref="~",
                prompt=None,
                params=JobParams(max_tokens=1),
                status=JobStatus.RUNNING,
                tenant_id=tenant.tenant_id or None,
            )
            state.restore_running(job, worker_id="")
    for pool in pools:
        state.upsert_pool(pool)
    for j in doc.jobs:
        p = j.params
        state.add_job(
            Job(
                job_id=j.job_id,
                model_ref=j.model_ref,
                prompt=None,
                params=JobParams.from_mapping(p.model_dump()),
                priority=Priority(j.priority),
                session_id=j.session_id,
                tenant_id=j.tenant_id,
                created_at=j.queued_at if j.created_at is None else j.created_at,
                queued_at=j.queued_at,
                attempts=j.attempts,
                prompt_hash=j.prompt_hash,
            )
        )
    return state.snapshot(doc.now)


def _item(cls: type[Any], raw: Any, where: str, problems: list[str]) -> Any:
    """``cls(**raw)`` or ``None``, with problems prefixed by ``where`` (the API types report
    paths relative to themselves)."""
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be an object, got {raw!r}"[:200])
        return None
    try:
        return cls(**raw)
    except RequestInvalid as exc:
        problems.extend(f"{where}.{e.message}" for e in exc.errors)
        return None


def _pool(raw: dict[str, Any], where: str, problems: list[str]) -> PoolInfo | None:
    before = len(problems)
    parts: dict[str, list[Any]] = {}
    for key, cls in (("gpus", GpuInfo), ("workers", WorkerInfo)):
        items = raw.get(key, [])
        if not isinstance(items, list):
            problems.append(f"{where}.{key}: must be a list")
            continue
        parts[key] = [_item(cls, x, f"{where}.{key}[{k}]", problems) for k, x in enumerate(items)]
    if len(problems) > before:
        return None
    pool: PoolInfo | None = _item(PoolInfo, {**raw, **parts}, where, problems)
    return pool


def _duplicates(doc: _Document, pools: list[PoolInfo]) -> list[str]:
    problems: list[str] = []
    for what, ids in (
        ("pools", [p.pool_id for p in pools]),
        ("jobs", [j.job_id for j in doc.jobs]),
        ("tenants", [t.tenant_id for t in doc.tenants]),
    ):
        seen: set[str] = set()
        for i, ident in enumerate(ids):
            if ident in seen:
                key = "pool_id" if what == "pools" else "job_id" if what == "jobs" else "tenant_id"
                problems.append(f"{what}[{i}].{key}: duplicate {ident!r}")
            seen.add(ident)
    workers: set[str] = set()
    for i, pool in enumerate(pools):
        for k, w in enumerate(pool.workers):
            if w.worker_id in workers:
                problems.append(f"pools[{i}].workers[{k}].worker_id: duplicate {w.worker_id!r}")
            workers.add(w.worker_id)
    return problems


def _config(doc: _Document) -> OrchestratorConfig:
    s = doc.settings
    data: dict[str, Any] = {
        "mode": s.mode,
        "queue": {
            "promote_after_s": s.promote_after_s,
            "fairness": s.fairness,
            "fairness_weights": dict(s.fairness_weights),
        },
        "scheduler": {
            "policy": s.ordering,
            "placement": s.placement,
            "snapshot_window": s.snapshot_window,
            "quota_action": s.quota_action,
        },
        "eviction": {"policy": s.eviction, "min_idle_s": s.min_idle_s},
        "models": [
            {
                "model_ref": m.model_ref,
                "aliases": list(m.aliases),
                "vram_bytes": m.vram_bytes,
                "family": m.family,
                **({} if m.context_length is None else {"context_length": m.context_length}),
            }
            for m in doc.models
        ],
        "tenants": [
            {
                "tenant_id": t.tenant_id,
                "weight": t.weight,
                **({} if t.max_queued is None else {"max_queued": t.max_queued}),
                **({} if t.max_running is None else {"max_running": t.max_running}),
            }
            for t in doc.tenants
            if t.tenant_id
        ],
    }
    if s.mode != "home":
        data["auth"] = {
            "clients": [{"token": _PLACEHOLDER_TOKEN}],
            "pool_tokens": [_PLACEHOLDER_TOKEN],
        }
    try:
        return OrchestratorConfig.from_mapping(data, env={})
    except ConfigInvalid as exc:
        raise SnapshotInvalid(list(exc.problems)) from None


# -- writing -------------------------------------------------------------------------------


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _wid(worker_id: str) -> str:
    if worker_id.startswith(PENDING_PREFIX):
        return _PENDING_OUT + worker_id[len(PENDING_PREFIX) :]
    return worker_id


def snapshot_document(snapshot: SchedulingSnapshot) -> dict[str, Any]:
    """The snapshot document of ``snapshot`` as plain data (see the module docstring).
    O(queue + fleet): for tools, not for every decision."""
    ctx = snapshot.to_ctx(window=0)
    cfg = ctx["config"]
    settings = {
        "mode": cfg["mode"],
        "ordering": snapshot.order_name,
        "fairness": cfg["queue"]["fairness"],
        "fairness_weights": {},
        "promote_after_s": cfg["queue"]["promote_after_s"],
        "placement": snapshot.placement_name,
        "eviction": cfg["eviction"]["policy"],
        "min_idle_s": cfg["eviction"]["min_idle_s"],
        "enforce_quotas": snapshot.enforce_quotas,
        "quota_action": snapshot.quota_action,
        "snapshot_window": cfg["scheduler"]["snapshot_window"],
    }
    aliases: dict[str, list[str]] = {}
    for alias, ref in sorted(ctx["catalog"]["aliases"].items()):
        aliases.setdefault(ref, []).append(alias)
    models = []
    for ref, m in sorted(ctx["catalog"]["models"].items()):
        entry: dict[str, Any] = {
            "model_ref": ref,
            "aliases": aliases.get(ref, []),
            "vram_bytes": m["vram_required_bytes"],
            "family": m["family"],
        }
        if m["context_length"] is not None:
            entry["context_length"] = m["context_length"]
        models.append(entry)
    tenants = [
        {
            "tenant_id": t["tenant_id"],
            "weight": t["weight"],
            "max_queued": t["max_queued"],
            "max_running": t["max_running"],
            "running": t["running"],
        }
        for _tid, t in sorted(ctx["tenants"].items())
    ]
    pools = []
    for p in ctx["pools"]:
        view = snapshot.pool(p["id"])
        pools.append(
            {
                "pool_id": p["id"],
                "endpoint": p["endpoint"],
                "status": p["status"],
                "capabilities": list(p["capabilities"]),
                "models": list(p["cached_models"]),
                "registered_at": 0.0 if view is None else view.registered_at,
                "last_heartbeat": _seconds(p["last_heartbeat_ms"]) or 0.0,
                "gpus": [
                    {
                        "gpu_id": g["id"],
                        "name": g["name"],
                        "vram_total_bytes": g["vram_total_bytes"],
                        "vram_free_bytes": g["vram_free_bytes"],
                        "utilization": g["utilization"],
                    }
                    for g in p["gpus"]
                ],
                "workers": [
                    {
                        "worker_id": _wid(w["id"]),
                        "model_ref": w["model_ref"],
                        "gpu_ids": list(w["gpu_ids"]),
                        "status": w["status"],
                        "uri": w["uri"],
                        "vram_bytes": w["vram_bytes"],
                        "current_job_id": w["current_job_id"],
                        "active_jobs": w["active_jobs"],
                        "max_concurrency": w["max_concurrency"],
                        "last_used_at": _seconds(w["last_used_ms"]),
                        "jobs_completed": w["jobs_completed"],
                    }
                    for w in p["workers"]
                ],
            }
        )
    jobs = []
    for qj in snapshot.jobs():
        job = qj.job
        jobs.append(
            {
                "job_id": job.job_id,
                "model_ref": job.model_ref,
                "priority": str(job.priority),
                "tenant_id": job.tenant_id,
                "session_id": job.session_id,
                "created_at": job.created_at,
                "queued_at": job.queued_at,
                "attempts": job.attempts,
                "prompt_hash": job.prompt_hash,
                "params": job.params.to_dict(),
            }
        )
    return {
        "format": SNAPSHOT_FORMAT,
        "now": snapshot.now,
        "settings": settings,
        "models": models,
        "tenants": tenants,
        "pools": pools,
        "jobs": jobs,
    }


def snapshot_to_json(snapshot: SchedulingSnapshot, *, indent: int | None = 2) -> str:
    """The snapshot document of ``snapshot`` as JSON text (see the module docstring)."""
    return json.dumps(snapshot_document(snapshot), indent=indent, sort_keys=False)


def sample_snapshot_json() -> str:
    """The built-in sample snapshot document (package data ``sample_snapshot.json``): three
    pools (online, degraded, offline) with A100 and RTX 4090 GPUs, workers of three models
    in every status, tenants with quotas, interactive, batch and seeded jobs."""
    return (
        resources.files("orchestrator_core.rhai")
        .joinpath("sample_snapshot.json")
        .read_text(encoding="utf-8")
    )


def sample_snapshot() -> SchedulingSnapshot:
    """A fresh snapshot of :func:`sample_snapshot_json` (policies are validated on it)."""
    return snapshot_from_json(sample_snapshot_json())
