"""The composition root: :class:`Orchestrator` builds the daemon's services and runs them.

Life of a job, and the service that handles each step::

    submit ─► queued ─────────────► running on a worker ─────────► end | error
    (admission)  ▲   (scheduling)       (relay)        │         (lifecycle)
                 └──── backoff ◄── fault before the 1st token ─┘  (lifecycle)

Every service reads and changes the one model of the cluster
(:class:`~orchestratord.services.cluster.Cluster`) and applies every change to a job through
the store first: an event reaches a client only after it is committed, and a job is
admitted (202) only after its row is durably committed. At start, unfinished jobs are
recovered (:mod:`~orchestratord.services.recovery`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from orchestrator_core import OrchestratorConfig
from orchestrator_core.retry import RetryPolicy
from orchestrator_core.scheduling.scheduler import SchedulerRegistry

from orchestratord.logs import log
from orchestratord.metrics import Metrics
from orchestratord.pg_bus import JOBS_CHANNEL, PgBus
from orchestratord.pool_agents import PoolAgentClient
from orchestratord.postgres_store import PostgresStore
from orchestratord.remote_streams import RemoteStreams
from orchestratord.roles import Roles
from orchestratord.services.admission import Admission
from orchestratord.services.cluster import Cluster
from orchestratord.services.context import Clock, Context, TaskGroup
from orchestratord.services.events import EventWriter
from orchestratord.services.fleet import Fleet
from orchestratord.services.jobs import ActiveJob, JobTable
from orchestratord.services.lifecycle import Lifecycle
from orchestratord.services.recovery import adopt, recover
from orchestratord.services.relay import Relay
from orchestratord.services.scheduling import SchedulingLoop
from orchestratord.services.views import Views
from orchestratord.store import Store
from orchestratord.workers import WorkerClient

__all__ = ["Orchestrator"]

_PURGE_EVERY_S = 600.0
_ADOPT_EVERY_S = 2.0
_CANCEL = "cancel:"


class Orchestrator:
    """The live daemon (see the module docstring): create, ``await start()``, serve,
    ``await stop()``. Everything runs on one event loop; policy calls run in a thread.

    Its parts, for the HTTP layer and for tests: :attr:`ctx` (shared state: configuration,
    store, cluster model, live jobs, metrics, clock), :attr:`admission`, :attr:`lifecycle`,
    :attr:`relay`, :attr:`fleet`, :attr:`views` and :attr:`scheduling`.
    """

    def __init__(
        self,
        config: OrchestratorConfig,
        *,
        store: Store,
        worker_client: WorkerClient,
        pool_client: PoolAgentClient,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        scheduler_registry: SchedulerRegistry | None = None,
        debounce_s: float = 0.002,
    ) -> None:
        self.ctx = Context(
            config=config,
            store=store,
            worker_client=worker_client,
            pool_client=pool_client,
            cluster=Cluster.from_config(config),
            retry=RetryPolicy.from_config(config.retry, rng),
            clock=clock,
            metrics=metrics or Metrics(),
        )
        events = EventWriter(store)
        self.lifecycle = Lifecycle(self.ctx, events)
        self.admission = Admission(self.ctx, self.lifecycle)
        self.relay = Relay(self.ctx, events, self.lifecycle)
        self.fleet = Fleet(self.ctx, self.lifecycle)
        self.views = Views(self.ctx)
        self.scheduling = SchedulingLoop(
            self.ctx,
            relay=self.relay,
            lifecycle=self.lifecycle,
            fleet=self.fleet,
            debounce_s=debounce_s,
            registry=scheduler_registry,
        )
        self.views.explain = self.scheduling.explain
        self.roles = Roles(
            config, store, self.ctx.metrics, lead=self._lead, step_down=self._step_down
        )
        # Several daemons on one PostgreSQL: followers hand submissions and cancels to the
        # leader over the bus, and the leader's events reach every daemon's SSE clients.
        self.bus: PgBus | None = None
        self.remote: RemoteStreams | None = None
        if isinstance(store, PostgresStore):
            self.bus = PgBus(store.dsn)
            self.remote = RemoteStreams(store)
        self._notes = TaskGroup()

    # -- shortcuts -------------------------------------------------------------------------

    @property
    def config(self) -> OrchestratorConfig:
        """The configuration."""
        return self.ctx.config

    @property
    def store(self) -> Store:
        """The store."""
        return self.ctx.store

    @property
    def metrics(self) -> Metrics:
        """The metrics."""
        return self.ctx.metrics

    @property
    def leading(self) -> bool:
        """This instance runs the queue (always, alone; the lease holder, on PostgreSQL)."""
        return self.roles.leading

    @property
    def ready(self) -> bool:
        """Recovery is done and the store is open."""
        return self.ctx.ready

    def clock(self) -> float:
        """The daemon's clock (Unix seconds)."""
        return self.ctx.clock()

    @property
    def active(self) -> dict[str, ActiveJob]:
        """Live jobs by id."""
        return self.ctx.jobs.active

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, then lead (alone: at once) or run for the lease (PostgreSQL)."""
        await self.ctx.store.open()
        self.ctx.started_at = self.ctx.clock()
        if self.bus is not None and self.remote is not None:
            self.remote.attach(self.bus)
            self.bus.on(JOBS_CHANNEL, self._job_note)
            await self.bus.start()
            self.remote.start()
            self.ctx.publish_hook = self.bus.publish_event
            self.ctx.hand_off = self._hand_off
        self.ctx.ready = True
        await self.roles.start()

    async def stop(self) -> None:
        """Stop serving: step down (give the lease up), then close the store and clients."""
        await self.roles.stop()
        self.ctx.ready = False
        await self._notes.cancel_all()
        if self.remote is not None:
            await self.remote.close()
        if self.bus is not None:
            await self.bus.close()
        await self.ctx.store.close()
        await self.ctx.worker_client.aclose()
        await self.ctx.pool_client.aclose()

    async def adopt(self, job_id: str) -> ActiveJob | None:
        """The leader takes on a job another daemon stored (at once, not waiting for its
        note); the job as this daemon runs it, or ``None`` (finished, unknown)."""
        return await adopt(self.ctx, self.lifecycle, job_id)

    def request_cancel(self, job_id: str) -> None:
        """A follower asks the leader to cancel ``job_id`` (over the bus; not durable: a
        cancel sent while no daemon leads is lost, and the client may send it again)."""
        self.ctx.hand_off(f"{_CANCEL}{job_id}")

    async def _lead(self) -> None:
        """Take the queue: restore the applied policy and the pools' inventory, recover the
        unfinished jobs from the store, start the timers and the scheduler (and, with other
        daemons, take the jobs they store)."""
        self.ctx.leading = True
        await self.scheduling.restore()  # the policy applied last, with its version
        await self.fleet.restore()  # pools' last inventory (offline until they heartbeat)
        await recover(self.ctx, self.lifecycle)
        self.ctx.tasks.spawn(self.fleet.sweep_forever(), name="pool-sweep")
        self.ctx.tasks.spawn(self._purge_forever(), name="result-purge")
        if self.bus is not None:
            self.ctx.tasks.spawn(self._adopt_forever(), name="adoption-sweep")
        self.scheduling.start()

    async def _step_down(self, why: str) -> None:
        """Let the queue go: relays are cut (their jobs stay running in the store, so the
        next leader recovers them), timers and background tasks end, the model is emptied."""
        self.ctx.leading = False
        await self.scheduling.stop()
        relays = []
        for a in self.ctx.jobs:
            a.cancel_timers()
            if a.relay is not None:
                relays.append(a.relay)
        await self.ctx.tasks.cancel_all(*relays)
        self.ctx.jobs = JobTable()
        self.ctx.cluster.reset(self.config)
        self.ctx.update_queue_gauges()

    def _hand_off(self, payload: str) -> None:
        if self.bus is not None:
            self._notes.spawn(self.bus.notify(JOBS_CHANNEL, payload), name="hand-off")

    def _job_note(self, payload: str) -> None:
        """Another daemon stored a job, or asks for a cancel: the leader acts on it."""
        if not self.ctx.leading:
            return
        if payload.startswith(_CANCEL):
            job_id = payload.removeprefix(_CANCEL)
            self.ctx.tasks.spawn(self._cancel(job_id), name=f"cancel-{job_id}")
        else:
            self.ctx.tasks.spawn(adopt(self.ctx, self.lifecycle, payload), name="adopt")

    async def _cancel(self, job_id: str) -> None:
        a = await adopt(self.ctx, self.lifecycle, job_id)
        if a is not None:
            await self.lifecycle.stop_job(a, "cancel")

    async def _adopt_forever(self) -> None:
        """Take the unfinished jobs other daemons stored whose note was lost (the bus was
        reconnecting, or no daemon led when they were stored)."""
        while True:
            await asyncio.sleep(_ADOPT_EVERY_S)
            try:
                for job_id in await self.ctx.store.unfinished_ids():
                    if self.ctx.jobs.get(job_id) is None:
                        await adopt(self.ctx, self.lifecycle, job_id)
            except Exception:
                log("http.error", "adoption sweep failed", level=logging.ERROR, exc_info=True)

    async def _purge_forever(self) -> None:
        retention = self.ctx.config.persistence.result_retention_s
        while True:
            try:
                await self.ctx.store.purge_results(self.ctx.clock() - retention)
            except Exception:
                log("http.error", "result purge failed", level=logging.ERROR, exc_info=True)
            await asyncio.sleep(_PURGE_EVERY_S)
