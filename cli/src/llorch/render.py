"""Human-readable rendering of jobs, pools and the scheduler (``--json`` bypasses all of it).

Pure formatting: each function takes orchestrator_core types (and ``now`` where ages are
shown) and writes through :class:`~llorch.output.Output`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from orchestrator_core import GpuInfo, JobStatusResponse, PoolInfo, WorkerInfo
from rich.text import Text

from llorch.output import Cell, Output

__all__ = [
    "STATUS_STYLES",
    "age",
    "gib",
    "render_job",
    "render_jobs",
    "render_pool",
    "render_pools",
    "render_scheduler",
    "styled",
    "vram_bar",
]

STATUS_STYLES: dict[str, str] = {
    "queued": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "online": "green",
    "degraded": "yellow",
    "offline": "red",
    "ready": "green",
    "busy": "cyan",
    "starting": "yellow",
    "draining": "magenta",
}


def styled(value: str) -> Text:
    """A status word in its colour (plain when the output has no colour)."""
    return Text(value, style=STATUS_STYLES.get(value, ""))


def age(then: float | None, now: float) -> str:
    """``12s``, ``3m``, ``2h``, ``4d`` since ``then`` (Unix seconds); ``-`` when unknown."""
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    stamp = datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({age(ts, now)} ago)"


def gib(n: int) -> str:
    """Bytes as GiB with one decimal."""
    return f"{n / 2**30:.1f}"


def vram_bar(used: int, total: int, width: int = 20) -> Text:
    """A bar of used VRAM, coloured green/yellow/red at 70 % and 90 %, with the figures."""
    fraction = used / total if total else 0.0
    filled = round(fraction * width)
    style = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {gib(used)}/{gib(total)} GiB {fraction:4.0%}")
    return bar


def _vram_cell(out: Output, used: int, total: int, width: int = 20) -> Cell:
    if out.tty:
        return vram_bar(used, total, width)
    return f"{gib(used)}/{gib(total)} GiB"


# -- jobs -------------------------------------------------------------------------------------


def _where(job: JobStatusResponse) -> str:
    if job.pool_id or job.worker_id:
        return f"{job.pool_id or '?'}/{job.worker_id or '?'}"
    return "-"


def render_jobs(out: Output, jobs: list[JobStatusResponse], now: float) -> None:
    """The job list as a table. Piped output always has the same columns (scripts count on
    them); on a terminal, the session and error columns appear only when some job has one and
    the worker is left to ``jobs status``."""
    columns = [
        "job",
        "status",
        "priority",
        "model",
        "session",
        "tokens",
        "age",
        "where",
        "error",
        "kind",
    ]
    rows: list[list[Cell]] = [
        [
            job.job_id,
            styled(job.status),
            job.priority,
            job.model,
            job.session_id or "-",
            str(job.tokens_generated),
            age(job.created_at, now),
            _where(job),
            job.error.code if job.error else "",
            job.kind,
        ]
        for job in jobs
    ]
    if out.tty:
        keep = [
            i
            for i, name in enumerate(columns)
            if (name != "session" or any(j.session_id for j in jobs))
            and (name != "error" or any(j.error for j in jobs))
        ]
        columns = ["pool" if columns[i] == "where" else columns[i] for i in keep]
        rows = [[row[i] for i in keep] for row in rows]
        for row, job in zip(rows, jobs, strict=True):
            row[columns.index("pool")] = job.pool_id or "-"
    out.table(columns, rows, no_wrap=["job", "status", "priority", "tokens", "age", "error"])


def render_job(out: Output, job: JobStatusResponse, now: float) -> None:
    """One job's details."""
    pairs: list[tuple[str, Cell]] = [
        ("job", job.job_id),
        ("kind", job.kind),
        ("status", styled(job.status)),
        ("model", job.model),
        ("priority", job.priority),
        ("session", job.session_id or "-"),
    ]
    if job.queue_position is not None and job.status == "queued":
        pairs.append(("queue position", str(job.queue_position)))
    pairs += [
        ("where", _where(job)),
        ("attempts", str(job.attempts)),
        ("tokens", str(job.tokens_generated)),
        ("created", _when(job.created_at, now)),
        ("started", _when(job.started_at, now)),
        ("finished", _when(job.finished_at, now)),
    ]
    if job.started_at is not None and job.finished_at is not None:
        pairs.append(("run time", f"{job.finished_at - job.started_at:.2f}s"))
    if job.error is not None:
        pairs.append(("error", Text(f"{job.error.code}: {job.error.message}", style="red")))
    pairs.append(("prompt sha256", job.prompt_hash))
    if job.explanation:
        pairs.append(("scheduler", json.dumps(job.explanation, sort_keys=True)))
    out.fields(pairs)


# -- pools ------------------------------------------------------------------------------------


def _vram_totals(gpus: list[GpuInfo]) -> tuple[int, int]:
    total = sum(g.vram_total_bytes for g in gpus)
    free = sum(g.vram_free_bytes for g in gpus)
    return total - free, total


def _worker_summary(workers: list[WorkerInfo]) -> str:
    if not workers:
        return "none"
    counts: dict[str, int] = {}
    for w in workers:
        counts[str(w.status)] = counts.get(str(w.status), 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def render_pools(out: Output, pools: list[PoolInfo], now: float) -> None:
    """The pool list as a table, with a VRAM bar per pool."""
    rows: list[list[Cell]] = []
    for pool in pools:
        used, total = _vram_totals(pool.gpus)
        rows.append(
            [
                pool.pool_id,
                styled(str(pool.status)),
                pool.endpoint,
                str(len(pool.gpus)),
                _vram_cell(out, used, total, width=10),
                _worker_summary(pool.workers),
                age(pool.last_heartbeat, now),
            ]
        )
    columns = ["pool", "status", "endpoint", "gpus", "vram used", "workers", "heartbeat"]
    out.table(columns, rows, no_wrap=["pool", "status", "gpus", "vram used", "heartbeat"])


def render_pool(out: Output, pool: PoolInfo, now: float) -> None:
    """One pool: its facts, its GPUs with VRAM bars, its workers with model and state."""
    used, total = _vram_totals(pool.gpus)
    pairs: list[tuple[str, Cell]] = [
        ("pool", pool.pool_id),
        ("status", styled(str(pool.status))),
        ("endpoint", pool.endpoint),
        ("capabilities", ", ".join(pool.capabilities) or "-"),
        ("models", ", ".join(pool.models) or "-"),
        ("version", pool.version or "-"),
        ("registered", _when(pool.registered_at, now)),
        ("last heartbeat", _when(pool.last_heartbeat, now)),
        ("vram", _vram_cell(out, used, total)),
    ]
    if pool.reported_status is not None:
        pairs.append(("reported status", styled(str(pool.reported_status))))
    out.fields(pairs)
    out.line()
    gpu_rows: list[list[Cell]] = [
        [
            g.gpu_id,
            g.name,
            _vram_cell(out, g.vram_total_bytes - g.vram_free_bytes, g.vram_total_bytes),
            gib(g.vram_free_bytes),
            f"{g.utilization:.0%}",
        ]
        for g in pool.gpus
    ]
    out.table(
        ["gpu", "name", "vram used", "free gib", "util"],
        gpu_rows,
        title="GPUs",
        no_wrap=["gpu", "vram used", "free gib", "util"],
    )
    out.line()
    worker_rows: list[list[Cell]] = [
        [
            w.worker_id,
            w.model_ref,
            styled(str(w.status)),
            ",".join(w.gpu_ids) or "-",
            w.current_job_id or "-",
            f"{w.active_jobs}/{w.max_concurrency}",
            str(w.jobs_completed),
            age(w.last_used_at, now),
        ]
        for w in pool.workers
    ]
    out.table(
        ["worker", "model", "state", "gpus", "job", "slots", "done", "idle"],
        worker_rows,
        title="Workers",
        no_wrap=["worker", "state", "slots", "done", "idle"],
    )


# -- scheduler --------------------------------------------------------------------------------


def render_scheduler(out: Output, data: Mapping[str, Any], now: float) -> None:
    """The daemon's scheduler description: scalar facts first, then any policy source."""
    pairs: list[tuple[str, Cell]] = []
    source: str | None = None
    for key, value in data.items():
        if value is None:
            continue
        if key in ("script", "source", "rules") and isinstance(value, str):
            source = value
            continue
        if key in ("since", "activated_at") and isinstance(value, int | float):
            shown = _when(float(value), now)
        else:
            shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        pairs.append((key, shown))
    out.fields(pairs)
    if source is not None:
        out.line()
        out.text(source.rstrip("\n"))
