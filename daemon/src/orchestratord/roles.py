"""Who runs the queue: the leader.

One daemon alone (SQLite or memory) leads from its start. Several daemons on one
PostgreSQL run for a lease (:class:`~orchestratord.leadership.PostgresLease`): the one that
holds it leads — it recovers the unfinished jobs from the database, runs scheduling,
dispatch, retries, timeouts and pool bookkeeping, and every write it makes carries its
term's fencing token (:attr:`~orchestratord.postgres_store.PostgresStore.term_fence`), so
that the database refuses them once another daemon has taken over. The others are
followers: they answer reads, and refuse anything that acts on jobs or pools with ``503
NOT_LEADER`` naming the leader's URL (``X-Orchestrator-Leader``), so that clients and pool
agents configured with every instance's URL move to the leader. A follower takes over when
the leader's lease expires (it died, froze or lost the database); a leader that loses its
lease steps down at once and becomes a follower.

:class:`Roles` drives the lease and runs the transitions — ``lead`` and ``step_down``,
given by the composition root — one at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Literal

from orchestrator_core import ErrorCode, OrchestratorConfig, OrchestratorError

from orchestratord.leadership import PostgresLease
from orchestratord.logs import log
from orchestratord.metrics import Metrics
from orchestratord.postgres_store import PostgresStore
from orchestratord.store import Store

__all__ = ["NotLeader", "Roles", "advertise_url"]

_SEPARATOR = " "


def advertise_url(config: OrchestratorConfig) -> str:
    """This instance's URL as others should reach it (``ha.advertise_url`` or the bind)."""
    if config.ha.advertise_url:
        return config.ha.advertise_url.rstrip("/")
    return f"http://{config.server.host}:{config.server.port}"


class NotLeader(OrchestratorError):
    """``503 NOT_LEADER``: this instance is a follower; ``details.leader`` is the leader's
    URL when known (sent as ``X-Orchestrator-Leader``)."""

    code = ErrorCode.NOT_LEADER

    def __init__(self, leader: str | None) -> None:
        where = f"; the leader is {leader}" if leader else "; no leader right now"
        super().__init__(
            f"this orchestratord is a follower{where}",
            details={"leader": leader} if leader else {},
        )


class Roles:
    """The lease, the role and the transitions (see the module docstring)."""

    def __init__(
        self,
        config: OrchestratorConfig,
        store: Store,
        metrics: Metrics,
        *,
        lead: Callable[[], Awaitable[None]],
        step_down: Callable[[str], Awaitable[None]],
    ) -> None:
        self.metrics = metrics
        self._lead = lead
        self._step_down = step_down
        self.url = advertise_url(config)
        self.leading = False
        """True while this instance runs the queue (from the start of taking the lead)."""
        self.recovered = False
        """True once this leader has restored the queue and started scheduling."""
        self._store = store if isinstance(store, PostgresStore) else None
        self.lease: PostgresLease | None = None
        if self._store is not None:
            instance = f"{self.url}{_SEPARATOR}{os.getpid()}-{secrets.token_hex(3)}"
            self.lease = PostgresLease(
                self._store.dsn,
                instance_id=instance,
                ttl_s=config.ha.ttl_s(config.heartbeat),
                on_elected=lambda epoch: self._then(self._elected(epoch)),
                on_lost=lambda why: self._then(self._lost(why)),
            )
        self._chain: asyncio.Future[None] | None = None

    @property
    def role(self) -> Literal["leader", "follower"]:
        """``leader`` or ``follower``."""
        return "leader" if self.leading else "follower"

    @property
    def epoch(self) -> int | None:
        """The current (or last) term's epoch; ``None`` for a daemon alone."""
        return None if self.lease is None else self.lease.epoch

    def leader_url(self) -> str | None:
        """The leader's URL as this instance last saw it (``None``: unknown)."""
        if self.leading:
            return self.url
        holder = None if self.lease is None else self.lease.holder
        return None if not holder else holder.split(_SEPARATOR, 1)[0]

    def refuse(self) -> NotLeader:
        """The error a follower answers with."""
        return NotLeader(self.leader_url())

    async def start(self) -> None:
        """Lead at once (alone), or run for the lease."""
        if self.lease is None:
            await self._elected(None)
            return
        self.lease.start()

    async def stop(self) -> None:
        """Step down and give the lease up (a follower takes over at once)."""
        if self.lease is not None:
            await self.lease.close(release=True)  # calls on_lost while leading
        if self._chain is not None:
            with contextlib.suppress(Exception):
                await self._chain
        if self.leading:
            await self._lost("stopping")

    def _then(self, step: Awaitable[None]) -> None:
        """Run the transition ``step`` after the ones before it."""
        before = self._chain

        async def run() -> None:
            if before is not None:
                with contextlib.suppress(Exception):
                    await before
            await step

        self._chain = asyncio.ensure_future(run())

    async def _elected(self, epoch: int | None) -> None:
        if self.leading:
            await self._lost("a new term")
        if self._store is not None and self.lease is not None:
            fence = self.lease.fence()
            if fence is None:  # lost again before we could act
                return
            self._store.term_fence = fence
        self.leading = True
        self.metrics.leader.set(1)
        self.metrics.leader_epoch.set(epoch or 0)
        log("daemon.leader", "leading: running the queue", epoch=epoch, url=self.url)
        try:
            await self._lead()
            self.recovered = True
        except Exception:
            log("daemon.leader", "taking the lead failed", level=40, exc_info=True)
            await self._lost("taking the lead failed")
            if self.lease is not None:
                await self.lease.release()

    async def _lost(self, why: str) -> None:
        if not self.leading:
            return
        self.leading = self.recovered = False
        self.metrics.leader.set(0)
        log("daemon.follower", f"stepping down: {why}", epoch=self.epoch)
        await self._step_down(why)
