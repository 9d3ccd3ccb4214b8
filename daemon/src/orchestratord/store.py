"""Durable state: the :class:`Store` protocol, the records it keeps and an in-memory store.

The daemon keeps two kinds of records:

* :class:`JobRow` — one row per job: the core :class:`~orchestrator_core.Job` plus what the
  daemon adds (timeout, tokens relayed, when the first token was relayed, the worker's URI,
  the correlation id). The raw prompt is kept only while the job is not finished; a finished
  job's row holds ``prompt = None`` and the SHA-256 hash (docs/design/persistence.md).
* :class:`StoredEvent` — the SSE events of a job (``queued``, ``started``, ``token``,
  ``metrics``, ``end``/``error``), numbered from 1, so that a client reconnecting with
  ``Last-Event-ID`` gets exactly what it missed and a finished job replays its result. At most
  one terminal event per job: stores refuse a second one.

Every write is one :meth:`Store.commit` call: job rows and events in one transaction.
``durable=True`` asks for the commit to survive power loss before it returns (admissions and
terminal states); ``durable=False`` (tokens) survives a crash of the daemon process, not of the
machine. Implementations: :class:`MemoryStore` here (unit tests, ``backend = "memory"``),
:class:`~orchestratord.sqlite_store.SqliteStore` and
:class:`~orchestratord.postgres_store.PostgresStore`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, LiteralString, Protocol, runtime_checkable

import orjson
from orchestrator_core import (
    ErrorCode,
    Job,
    JobKind,
    JobParams,
    JobStatus,
    OrchestratorError,
    Priority,
)

__all__ = [
    "JOB_COLUMNS",
    "TERMINAL_KINDS",
    "DuplicateTerminalEvent",
    "FencedOut",
    "JobFilter",
    "JobPage",
    "JobRow",
    "MemoryStore",
    "PolicyRecord",
    "PoolRecord",
    "Store",
    "StoreUnavailable",
    "StoredEvent",
    "params_from_json",
    "params_to_json",
    "row_from_mapping",
    "row_values",
]

JOB_COLUMNS: tuple[LiteralString, ...] = (
    "job_id",
    "model_ref",
    "prompt",
    "prompt_hash",
    "params",
    "priority",
    "status",
    "session_id",
    "tenant_id",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "attempts",
    "pool_id",
    "worker_id",
    "worker_uri",
    "error_code",
    "error_message",
    "timeout_s",
    "tokens",
    "first_token_at",
    "correlation_id",
    "kind",
)
"""The columns of a stored job row, as :func:`row_values` names them (both SQL stores)."""

TERMINAL_KINDS = frozenset({"end", "error"})
"""SSE event kinds that end a job's stream."""


class DuplicateTerminalEvent(Exception):
    """A store was asked to record a second terminal event for a job (a bug upstream)."""


class FencedOut(OrchestratorError):
    """A fenced write was refused: its leader epoch is no longer the lease's current one
    (another daemon took over). Nothing of the write was applied; the writer must stop
    acting as leader (docs/design/persistence.md, "Leader lease and fencing"). Answered
    as ``503 NOT_LEADER``."""

    code = ErrorCode.NOT_LEADER


class StoreUnavailable(OrchestratorError):
    """The database could not be reached (a server restart, a network cut): nothing of the
    write was applied, or the read could not be made. Answered as ``503
    STORE_UNAVAILABLE``; the store reconnects by itself."""

    code = ErrorCode.STORE_UNAVAILABLE


@dataclass(slots=True)
class JobRow:
    """A job as stored: the core job plus the daemon's bookkeeping."""

    job: Job
    timeout_s: float
    correlation_id: str = ""
    tokens: int = 0
    first_token_at: float | None = None
    worker_uri: str | None = None
    seq: int = 0
    """Admission order, assigned by the store (0 until stored)."""

    @property
    def deadline(self) -> float:
        """Unix time at which the job fails with DEADLINE_EXCEEDED (from submission)."""
        return self.job.created_at + self.timeout_s

    def copy(self) -> JobRow:
        """A deep copy (stores never share mutable state with their callers)."""
        return copy.deepcopy(self)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One SSE event of a job: ``event_id`` increases from 1 within the job."""

    job_id: str
    event_id: int
    kind: str
    data: str
    """The event's JSON payload, serialised once."""

    @property
    def terminal(self) -> bool:
        """True for ``end`` and ``error``."""
        return self.kind in TERMINAL_KINDS

    def payload(self) -> dict[str, Any]:
        """The decoded JSON payload."""
        value: dict[str, Any] = orjson.loads(self.data)
        return value


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Filters of ``GET /v2/tasks``; ``None`` matches anything."""

    status: str | None = None
    priority: str | None = None
    session_id: str | None = None
    tenant_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs, newest first, and the cursor of the next page (``None`` at the end)."""

    rows: list[JobRow]
    next_cursor: int | None


def params_to_json(params: JobParams) -> str:
    """Serialise sampling parameters."""
    return orjson.dumps(params.to_dict()).decode()


def params_from_json(text: str) -> JobParams:
    """Inverse of :func:`params_to_json`."""
    return JobParams.from_mapping(orjson.loads(text))


def row_values(row: JobRow) -> dict[str, Any]:
    """Column values of ``row`` (shared by the SQL stores)."""
    job = row.job
    return {
        "job_id": job.job_id,
        "model_ref": job.model_ref,
        "prompt": job.prompt,
        "prompt_hash": job.prompt_hash,
        "params": params_to_json(job.params),
        "priority": str(job.priority),
        "status": str(job.status),
        "session_id": job.session_id,
        "tenant_id": job.tenant_id,
        "created_at": job.created_at,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "attempts": job.attempts,
        "pool_id": job.pool_id,
        "worker_id": job.worker_id,
        "worker_uri": row.worker_uri,
        "error_code": None if job.error_code is None else str(job.error_code),
        "error_message": job.error_message,
        "timeout_s": row.timeout_s,
        "tokens": row.tokens,
        "first_token_at": row.first_token_at,
        "correlation_id": row.correlation_id,
        "kind": str(job.kind),
    }


def row_from_mapping(values: dict[str, Any]) -> JobRow:
    """Rebuild a :class:`JobRow` from column values (inverse of :func:`row_values`)."""
    code = values["error_code"]
    job = Job(
        job_id=values["job_id"],
        model_ref=values["model_ref"],
        prompt=values["prompt"],
        params=params_from_json(values["params"]),
        priority=Priority(values["priority"]),
        status=JobStatus(values["status"]),
        session_id=values["session_id"],
        tenant_id=values["tenant_id"],
        created_at=values["created_at"],
        queued_at=values["queued_at"],
        started_at=values["started_at"],
        finished_at=values["finished_at"],
        attempts=values["attempts"],
        pool_id=values["pool_id"],
        worker_id=values["worker_id"],
        error_code=_code(code),
        error_message=values["error_message"],
        prompt_hash=values["prompt_hash"],
        kind=JobKind(values.get("kind") or "task"),
    )
    return JobRow(
        job=job,
        timeout_s=values["timeout_s"],
        correlation_id=values["correlation_id"] or "",
        tokens=values["tokens"],
        first_token_at=values["first_token_at"],
        worker_uri=values["worker_uri"],
        seq=values.get("seq", 0) or 0,
    )


def _code(code: str | None) -> ErrorCode | None:
    if code is None:
        return None
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL


@runtime_checkable
class Store(Protocol):
    """Where jobs and their events live. All methods are coroutines; none blocks the loop."""

    async def open(self) -> None:
        """Create or migrate the schema. Called once before any other method."""
        ...

    async def close(self) -> None:
        """Flush and release resources."""
        ...

    async def commit(
        self,
        *,
        jobs: Sequence[JobRow] = (),
        events: Sequence[StoredEvent] = (),
        durable: bool = True,
        unfenced: bool = False,
    ) -> None:
        """Upsert ``jobs`` and append ``events`` in one transaction. A new job row gets the
        next ``seq``. Raises :class:`DuplicateTerminalEvent` for a second terminal event of a
        job (nothing of the transaction is then applied). ``unfenced``: a write any daemon
        may make whatever its role (a submission) — a store shared by several daemons
        (PostgreSQL) fences every other write with the leader's term."""
        ...

    async def get_job(self, job_id: str) -> JobRow | None:
        """The job's row, or ``None``."""
        ...

    async def list_jobs(self, flt: JobFilter, *, limit: int, before: int | None) -> JobPage:
        """Jobs matching ``flt`` with ``seq < before`` (all when ``None``), newest first."""
        ...

    async def unfinished_jobs(self) -> list[JobRow]:
        """Every queued or running job, in admission order (for restart recovery)."""
        ...

    async def queued_count(self) -> int:
        """How many jobs are queued (a follower's capacity check)."""
        ...

    async def unfinished_ids(self) -> list[str]:
        """The ids of every queued or running job, in admission order (cheaper than
        :meth:`unfinished_jobs`: the leader's sweep for jobs other daemons stored)."""
        ...

    async def events_after(self, job_id: str, after: int) -> list[StoredEvent]:
        """Events of ``job_id`` with ``event_id > after``, in order."""
        ...

    async def last_event_id(self, job_id: str) -> int:
        """The highest event id of ``job_id`` (0 when it has none)."""
        ...

    async def purge_results(self, finished_before: float) -> int:
        """Delete the token and metrics events of jobs finished before ``finished_before``
        (result retention); the row, the hash and the terminal event stay. Returns the
        number of events deleted."""
        ...

    async def save_policy(self, record: PolicyRecord) -> None:
        """Append ``record`` to the history of applied scheduler policies, durably (before
        ``PUT /v2/scheduler`` answers). Fenced with the leader's term where the store is
        shared. Its ``version`` must be new."""
        ...

    async def active_policy(self) -> PolicyRecord | None:
        """The policy applied last (the highest version), or ``None``."""
        ...

    async def save_pools(self, pools: Sequence[PoolRecord], removed: Sequence[str] = ()) -> None:
        """Upsert the inventory of ``pools`` and forget the pools ``removed``, in one
        transaction (not durable: a view, not a promise). Fenced like :meth:`save_policy`."""
        ...

    async def load_pools(self) -> list[PoolRecord]:
        """Every stored pool inventory, by pool id."""
        ...


@dataclass
class MemoryStore:
    """A :class:`Store` in memory: for unit tests and ``persistence.backend = "memory"``.

    Not durable by definition; otherwise it keeps the same rules as the SQL stores (copies in
    and out, one terminal event per job, admission order).
    """

    _rows: dict[str, JobRow] = field(default_factory=dict)
    _events: dict[str, list[StoredEvent]] = field(default_factory=dict)
    _seq: int = 0
    commits: int = 0
    """Number of successful commits (tests use it to check what was written)."""

    async def open(self) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Nothing to release."""

    async def commit(
        self,
        *,
        jobs: Sequence[JobRow] = (),
        events: Sequence[StoredEvent] = (),
        durable: bool = True,
        unfenced: bool = False,
    ) -> None:
        """See :meth:`Store.commit`."""
        terminal = {e.job_id for e in events if e.terminal}
        for job_id in terminal:
            if any(e.terminal for e in self._events.get(job_id, ())):
                raise DuplicateTerminalEvent(job_id)
        if len(terminal) != sum(1 for e in events if e.terminal):
            raise DuplicateTerminalEvent(next(iter(terminal)))
        for row in jobs:
            stored = row.copy()
            old = self._rows.get(row.job.job_id)
            if old is None:
                self._seq += 1
                stored.seq = self._seq
                row.seq = self._seq
            else:
                stored.seq = old.seq
            self._rows[row.job.job_id] = stored
        for event in events:
            self._events.setdefault(event.job_id, []).append(event)
        self.commits += 1

    async def get_job(self, job_id: str) -> JobRow | None:
        """See :meth:`Store.get_job`."""
        row = self._rows.get(job_id)
        return None if row is None else row.copy()

    async def list_jobs(self, flt: JobFilter, *, limit: int, before: int | None) -> JobPage:
        """See :meth:`Store.list_jobs`."""
        rows = sorted(self._rows.values(), key=lambda r: r.seq, reverse=True)
        out: list[JobRow] = []
        for row in rows:
            if before is not None and row.seq >= before:
                continue
            job = row.job
            if (
                (flt.status is not None and str(job.status) != flt.status)
                or (flt.priority is not None and str(job.priority) != flt.priority)
                or (flt.session_id is not None and job.session_id != flt.session_id)
                or (flt.tenant_id is not None and job.tenant_id != flt.tenant_id)
                or (flt.model is not None and job.model_ref != flt.model)
            ):
                continue
            out.append(row.copy())
            if len(out) > limit:
                break
        more = len(out) > limit
        out = out[:limit]
        return JobPage(out, out[-1].seq if more and out else None)

    async def unfinished_jobs(self) -> list[JobRow]:
        """See :meth:`Store.unfinished_jobs`."""
        rows = [r for r in self._rows.values() if not r.job.is_terminal]
        return [r.copy() for r in sorted(rows, key=lambda r: r.seq)]

    async def unfinished_ids(self) -> list[str]:
        """See :meth:`Store.unfinished_ids`."""
        return [r.job.job_id for r in await self.unfinished_jobs()]

    async def queued_count(self) -> int:
        """See :meth:`Store.queued_count`."""
        return sum(1 for r in self._rows.values() if r.job.status is JobStatus.QUEUED)

    async def events_after(self, job_id: str, after: int) -> list[StoredEvent]:
        """See :meth:`Store.events_after`."""
        events = [e for e in self._events.get(job_id, ()) if e.event_id > after]
        return sorted(events, key=lambda e: e.event_id)  # deferred events come in later

    async def last_event_id(self, job_id: str) -> int:
        """See :meth:`Store.last_event_id`."""
        return max((e.event_id for e in self._events.get(job_id, ())), default=0)

    async def purge_results(self, finished_before: float) -> int:
        """See :meth:`Store.purge_results`."""
        deleted = 0
        for job_id, row in self._rows.items():
            finished = row.job.finished_at
            if finished is None or finished >= finished_before:
                continue
            events = self._events.get(job_id, [])
            kept = [e for e in events if e.kind not in {"token", "metrics"}]
            deleted += len(events) - len(kept)
            self._events[job_id] = kept
        return deleted

    # -- scheduler policies and pool inventory ---------------------------------------------

    _policies: list[PolicyRecord] = field(default_factory=list)
    _pools: dict[str, PoolRecord] = field(default_factory=dict)

    async def save_policy(self, record: PolicyRecord) -> None:
        """See :meth:`Store.save_policy`."""
        if any(p.version == record.version for p in self._policies):
            raise ValueError(f"policy version {record.version} is already stored")
        self._policies.append(record)

    async def active_policy(self) -> PolicyRecord | None:
        """See :meth:`Store.active_policy`."""
        return max(self._policies, key=lambda p: p.version, default=None)

    async def save_pools(self, pools: Sequence[PoolRecord], removed: Sequence[str] = ()) -> None:
        """See :meth:`Store.save_pools`."""
        for pool in pools:
            self._pools[pool.pool_id] = pool
        for pool_id in removed:
            self._pools.pop(pool_id, None)

    async def load_pools(self) -> list[PoolRecord]:
        """See :meth:`Store.load_pools`."""
        return [self._pools[k] for k in sorted(self._pools)]


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One scheduler policy applied through ``PUT /v2/scheduler``, as stored (table
    ``scheduler_policies``: one row per version; the highest is the active one). It holds
    what re-applies the policy exactly: the policy's name (a built-in, ``rhai`` or
    ``rules``), the placement in effect, and the Rhai script or YAML rules themselves."""

    version: int
    """1 for the first policy applied, then one more per apply (0: the configuration's)."""
    policy: str
    placement: str
    script: str | None = None
    rules: str | None = None
    applied_at: float = 0.0
    """Unix time of the apply."""
    applied_by: str = ""
    """Who applied it: the principal's kind (``anonymous`` or ``client``)."""
    fingerprint: str = ""
    """The fingerprint of the token it was applied with (``""`` without one)."""

    LATEST_SQL: ClassVar[LiteralString] = (
        "SELECT version, policy, placement, script, rules, applied_at, applied_by, "
        "fingerprint FROM scheduler_policies ORDER BY version DESC LIMIT 1"
    )
    """The query of the active policy (SQLite and PostgreSQL); its row -> :meth:`of_row`."""

    @classmethod
    def of_row(cls, r: Sequence[Any]) -> PolicyRecord:
        """The record of a row of :attr:`LATEST_SQL`."""
        return cls(
            version=int(r[0]),
            policy=r[1],
            placement=r[2],
            script=r[3],
            rules=r[4],
            applied_at=float(r[5]),
            applied_by=r[6],
            fingerprint=r[7],
        )


@dataclass(frozen=True, slots=True)
class PoolRecord:
    """A pool's last known inventory, as stored (table ``pools``, keyed by ``pool_id``):
    for views after a restart or a takeover, until the pool heartbeats again."""

    pool_id: str
    inventory: str
    """The pool's :class:`~orchestrator_core.PoolInfo` as JSON."""
    last_heartbeat: float
    """Unix time of the pool's last registration or heartbeat the leader saw."""
    token: str = ""
    """Fingerprint of the token the pool registered with (``""``: none known)."""
