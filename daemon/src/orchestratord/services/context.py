"""What every service of the daemon shares, in one object: :class:`Context`.

The composition root (:class:`~orchestratord.orchestrator.Orchestrator`) builds one context
and hands it to each service; services hold no global state of their own beyond it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from orchestrator_core import OrchestratorConfig, Priority
from orchestrator_core.retry import RetryPolicy

from orchestratord.metrics import Metrics
from orchestratord.pool_agents import PoolAgentClient
from orchestratord.services.cluster import Cluster
from orchestratord.services.jobs import JobTable
from orchestratord.store import Store, StoredEvent
from orchestratord.streams import JobStream
from orchestratord.workers import WorkerClient

__all__ = ["Clock", "Context", "TaskGroup", "dumps"]

Clock = Callable[[], float]


def dumps(data: dict[str, Any]) -> str:
    """Compact JSON of an event payload (UTF-8 kept as is)."""
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class TaskGroup:
    """Background tasks the daemon started and must cancel when it stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; it is kept until it ends."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self, *others: asyncio.Task[Any]) -> None:
        """Cancel every task (and ``others``) and wait for them to end."""
        for task in (*self._tasks, *others):
            task.cancel()
        await asyncio.gather(*self._tasks, *others, return_exceptions=True)


@dataclass
class Context:
    """The daemon's shared parts (see the module docstring)."""

    config: OrchestratorConfig
    store: Store
    worker_client: WorkerClient
    pool_client: PoolAgentClient
    cluster: Cluster
    retry: RetryPolicy
    clock: Clock = time.time
    metrics: Metrics = field(default_factory=Metrics)
    jobs: JobTable = field(default_factory=JobTable)
    tasks: TaskGroup = field(default_factory=TaskGroup)
    ready: bool = False
    started_at: float = 0.0
    leading: bool = False
    """This daemon runs the queue (see :mod:`orchestratord.roles`); a follower stores the
    submissions it takes and hands them to the leader (:attr:`hand_off`)."""
    publish_hook: Callable[[StoredEvent], object] | None = None
    """Told of every event a job of this daemon publishes (several daemons: the others)."""
    hand_off: Callable[[str], None] = lambda _job_id: None
    adopting: set[str] = field(default_factory=set)
    """Jobs stored by other daemons being taken on right now."""
    """A follower stored a new job (or a cancel request, ``cancel:<id>``) for the leader."""

    def new_stream(self, job_id: str, events: Iterable[StoredEvent] = ()) -> JobStream:
        """The event stream of a job this daemon runs."""
        return JobStream(job_id, events, on_publish=self.publish_hook)

    def update_queue_gauges(self) -> None:
        """Queue depth per priority, from the cluster model."""
        for priority in (Priority.INTERACTIVE, Priority.BATCH):
            self.metrics.queue_depth.labels(str(priority)).set(self.cluster.queued(priority))

    def changed(self) -> None:
        """Something scheduling-relevant changed: update gauges, wake the scheduler."""
        self.update_queue_gauges()
        self.cluster.changed()
