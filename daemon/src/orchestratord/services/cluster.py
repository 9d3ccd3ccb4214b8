"""The one in-memory model of the cluster, and how the daemon changes it.

:class:`Cluster` wraps the library's :class:`~orchestrator_core.scheduling.ClusterState`:
the queue (in the active policy's order), the fleet (pools, GPUs, workers), which job runs
where, tenants and the model catalog. Admission, status views, explanations and the
scheduler all read this one object, so a queue position shown to a client is the position
the scheduler dispatches in.

A policy call runs in a worker thread and reads the state while the event loop goes on.
So that it reads a consistent state, every change goes through :meth:`Cluster.mutate`:
applied at once normally, deferred while a policy call is in flight (:meth:`Cluster.frozen`)
and applied in order when it returns. Reads on the event loop are always safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from orchestrator_core import (
    Job,
    JobStatus,
    OrchestratorConfig,
    PoolInfo,
    PoolStatus,
    Priority,
    WorkerStatus,
)
from orchestrator_core.scheduling import ClusterState

from orchestratord.logs import log

__all__ = ["Cluster"]


class Cluster:
    """The daemon's model of the cluster (see the module docstring)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._frozen = False
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._deferred: list[Callable[[], object]] = []
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def from_config(cls, config: OrchestratorConfig) -> Cluster:
        """A model with the queue order, placement, catalog and tenants of ``config``."""
        return cls(ClusterState.from_config(config))

    # -- changes ---------------------------------------------------------------------------

    def reset(self, config: OrchestratorConfig) -> None:
        """Forget everything (a leader stepping down): an empty model for ``config``."""
        self.state = ClusterState.from_config(config)
        self._deferred.clear()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change that may allow scheduling progress."""
        self._listeners.append(callback)

    def changed(self) -> None:
        """Tell the listeners (the scheduling loop) that something changed."""
        for callback in self._listeners:
            callback()

    @property
    def is_frozen(self) -> bool:
        """A policy call is reading the state: changes are deferred."""
        return self._frozen

    def mutate(self, fn: Callable[[ClusterState], object]) -> None:
        """Apply ``fn`` to the state now, or once the policy call in flight returns."""
        if self._frozen:
            self._deferred.append(lambda: fn(self.state))
            return
        self._apply(lambda: fn(self.state))

    @staticmethod
    def _apply(fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # the model must never take the daemon down
            log(
                "scheduler.error", "cluster state update failed", level=logging.ERROR, exc_info=True
            )

    @contextmanager
    def frozen(self) -> Iterator[ClusterState]:
        """Defer changes while the body (a policy call) reads the state."""
        self._frozen = True
        self._thawed.clear()
        try:
            yield self.state
        finally:
            self._frozen = False
            deferred, self._deferred = self._deferred, []
            for fn in deferred:
                self._apply(fn)
            self._thawed.set()

    async def thawed(self) -> None:
        """Until no policy call reads the state (changes apply at once again)."""
        await self._thawed.wait()

    async def settled(self) -> None:
        """Until every change made so far is applied to the state: a route that changed the
        model awaits this before answering, so its client reads its own writes."""
        if self._frozen:
            await self._thawed.wait()

    # -- the daemon's events, in the model's words -----------------------------------------

    def enqueue(self, job: Job) -> None:
        """``job`` became eligible for dispatch (admitted, recovered, retry due)."""

        def apply(state: ClusterState) -> None:
            queued = job.status is JobStatus.QUEUED
            if queued and state.get_job(job.job_id) is None and not state.is_running(job.job_id):
                state.add_job(job)

        self.mutate(apply)

    def unqueue(self, job_id: str) -> None:
        """A queued job left without running (cancelled, expired, dropped, failed)."""
        self.mutate(lambda s: s.remove_job(job_id) if s.get_job(job_id) is not None else None)

    def dispatched(self, job_id: str, worker_id: str, now: float) -> None:
        """A queued job was sent to a worker."""
        self.mutate(
            lambda s: (
                s.job_dispatched(job_id, worker_id, now=now)
                if s.get_job(job_id) is not None
                else None
            )
        )

    def released(self, job_id: str, now: float) -> None:
        """A dispatched job no longer occupies its worker (any outcome)."""
        self.mutate(lambda s: s.job_finished(job_id, now=now))

    def worker_failed(self, worker_id: str) -> None:
        """A worker could not be reached or died mid-job: no more jobs there until a
        heartbeat reports it again."""
        self.mutate(
            lambda s: (
                s.mark_worker(worker_id, WorkerStatus.FAILED)
                if s.worker_view(worker_id) is not None
                else None
            )
        )

    # -- reads -----------------------------------------------------------------------------

    def position(self, job_id: str) -> int | None:
        """The queue position of ``job_id`` (0 = next), or ``None`` if it is not queued."""
        if self.state.get_job(job_id) is None:
            return None
        return self.state.position(job_id)

    def queued(self, priority: Priority | None = None) -> int:
        """Queued jobs (of one priority)."""
        return self.state.queued_count(priority)

    def pools(self) -> list[PoolInfo]:
        """Every registered pool with the status the model holds, sorted by id."""
        return self.state.pool_infos()

    def pool(self, pool_id: str) -> PoolInfo | None:
        """One pool, or ``None``."""
        return self.state.pool_info(pool_id)

    def live_pool(self, pool_id: str) -> PoolInfo | None:
        """One pool that is not offline, or ``None``."""
        pool = self.state.pool_info(pool_id)
        return None if pool is None or pool.status is PoolStatus.OFFLINE else pool

    def canonical_model(self, name: str) -> str:
        """The catalog's model_ref for ``name`` (a model_ref or one of its aliases)."""
        return self.state.catalog.resolve(name)
