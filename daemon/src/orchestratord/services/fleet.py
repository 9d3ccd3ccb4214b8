"""The fleet: pools registering and heartbeating, their status over time, and the worker
starts and evictions the scheduler asks for.

A pool's facts live in the cluster model; the library's pure
:class:`~orchestrator_core.HeartbeatRules` turn a registration or a heartbeat into the
pool's new record (refusing conflicts and stale heartbeats) and derive its status from the
heartbeat's age. Jobs running on a worker a heartbeat no longer reports (or reports failed),
or on a pool that unregistered or went offline, are handed to the lifecycle as lost.

Each pool's inventory is also stored, for views after a restart or a takeover: at once
when it registers or unregisters, and with its heartbeats at most every
:attr:`Fleet.flush_interval_s` (a background flush of the pools that changed; not
durable). A daemon taking the lead loads it (:meth:`Fleet.restore`): the pools show in
``GET /v2/pools`` as ``offline`` — no work goes to them — until they heartbeat (or
register) to this daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid

from orchestrator_core import (
    ErrorCode,
    HeartbeatRules,
    OrchestratorError,
    PoolHeartbeat,
    PoolInfo,
    PoolNotFound,
    PoolRegistration,
    PoolStatus,
    WorkerStatus,
)
from orchestrator_core.scheduling import ClusterState

from orchestratord.auth import Principal
from orchestratord.logs import log
from orchestratord.pool_agents import PoolRequestFailed
from orchestratord.services.context import Context
from orchestratord.services.jobs import ActiveJob
from orchestratord.services.lifecycle import Lifecycle
from orchestratord.store import PoolRecord

__all__ = ["Fleet"]


def _set_status(pool_id: str, status: PoolStatus, state: ClusterState) -> None:
    state.set_pool_status(pool_id, status)


def _restore_pool(info: PoolInfo, state: ClusterState) -> None:
    if state.pool_info(info.pool_id) is None:
        state.upsert_pool(info)


class Fleet:
    """Pools and their workers (see the module docstring)."""

    def __init__(self, ctx: Context, lifecycle: Lifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.rules = HeartbeatRules.from_config(ctx.config)
        self.pool_tokens: dict[str, str] = {}
        """pool_id -> fingerprint of the token it registered with."""
        self.flush_interval_s = 2.0
        """Heartbeat inventories are stored at most this often (register/unregister: now)."""
        self._restored: set[str] = set()
        """Pools loaded from the store that have not heartbeated to this daemon: offline."""
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._flush_now = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    # -- pools -----------------------------------------------------------------------------

    def fingerprint_at(self, endpoint: str) -> str | None:
        """The fingerprint of the token the pool at ``endpoint`` registered with (the pool
        client sends that pool the configured token it belongs to)."""
        for pool in self.ctx.cluster.pools():
            if pool.endpoint == endpoint:
                return self.pool_tokens.get(pool.pool_id)
        return None

    def register(self, reg: PoolRegistration, principal: Principal) -> PoolInfo:
        """``POST /v2/pools/register``; POOL_CONFLICT if a live pool holds the id elsewhere."""
        info = self.rules.registered(reg, self.ctx.cluster.pool(reg.pool_id), self.ctx.clock())
        self.pool_tokens[reg.pool_id] = principal.fingerprint
        self._restored.discard(reg.pool_id)
        self.ctx.cluster.mutate(lambda s: s.upsert_pool(info))
        self._save(reg.pool_id, now=True)
        log(
            "pool.registered",
            "pool registered",
            pool_id=reg.pool_id,
            endpoint=reg.endpoint,
            workers=len(reg.workers),
            token=principal.fingerprint or None,
        )
        self._gauges()
        self.ctx.changed()
        return info

    def _check_owner(self, pool_id: str, principal: Principal) -> None:
        expected = self.pool_tokens.get(pool_id)
        if principal.kind == "pool" and expected and expected != principal.fingerprint:
            raise OrchestratorError(
                f"pool {pool_id} registered with another token", code=ErrorCode.FORBIDDEN
            )

    def _existing(self, pool_id: str) -> PoolInfo:
        pool = self.ctx.cluster.pool(pool_id)
        if pool is None:
            raise PoolNotFound(pool_id)
        return pool

    def heartbeat(self, pool_id: str, beat: PoolHeartbeat, principal: Principal) -> PoolInfo:
        """``POST /v2/pools/{id}/heartbeat``: refresh the inventory; jobs on workers the pool
        no longer reports (or reports failed) are treated as lost."""
        self._check_owner(pool_id, principal)
        state = self.ctx.cluster.state
        info = self.rules.heartbeat(
            self._existing(pool_id), beat, self.ctx.clock(), state.pool_sent_at(pool_id)
        )
        alive = {w.worker_id for w in info.workers if w.status is not WorkerStatus.FAILED}
        for a in self._running_on(pool_id):
            if a.on_worker is not None and a.on_worker[1] not in alive:
                self.ctx.tasks.spawn(
                    self.lifecycle.worker_gone(a, "worker vanished"), name="worker-gone"
                )
        self._restored.discard(pool_id)  # alive: its status is derived again
        self.ctx.cluster.mutate(lambda s: s.upsert_pool(info, sent_at=beat.sent_at))
        self._save(pool_id, now=False)
        self._gauges()
        self.ctx.changed()
        return info

    def unregister(self, pool_id: str, principal: Principal) -> PoolInfo:
        """``DELETE /v2/pools/{id}``: forget the pool; its running jobs are treated as lost."""
        self._check_owner(pool_id, principal)
        info = self._existing(pool_id).model_copy(update={"status": PoolStatus.OFFLINE})
        self.pool_tokens.pop(pool_id, None)
        self._lost(pool_id, f"pool {pool_id} went away")
        self._restored.discard(pool_id)
        self.ctx.cluster.mutate(lambda s: s.remove_pool(pool_id))
        self._save(pool_id, now=True, removed=True)
        log("pool.unregistered", "pool unregistered", pool_id=pool_id)
        self._gauges()
        self.ctx.changed()
        return info

    def _running_on(self, pool_id: str) -> list[ActiveJob]:
        """The live jobs a relay runs on the pool's workers."""
        out = []
        for job_id in self.ctx.cluster.state.jobs_on_pool(pool_id):
            a = self.ctx.jobs.get(job_id)
            if a is not None and a.on_worker is not None and a.on_worker[0] == pool_id:
                out.append(a)
        return out

    def _lost(self, pool_id: str, why: str) -> None:
        for a in self._running_on(pool_id):
            self.ctx.tasks.spawn(self.lifecycle.worker_gone(a, why), name="gone")

    def sweep(self) -> None:
        """Apply pool status changes derived from heartbeat ages."""
        now = self.ctx.clock()
        for pool in self.ctx.cluster.pools():
            if pool.pool_id in self._restored:
                continue  # offline until it heartbeats to this daemon
            new = self.rules.status(pool, now)
            if new is pool.status:
                continue
            log(
                "pool.status",
                f"{pool.status} -> {new}",
                pool_id=pool.pool_id,
                old=str(pool.status),
                new=str(new),
            )
            if new is PoolStatus.OFFLINE:
                self._lost(pool.pool_id, f"pool {pool.pool_id} went away")
            self.ctx.cluster.mutate(functools.partial(_set_status, pool.pool_id, new))
        self._gauges()

    def _gauges(self) -> None:
        pools = dict.fromkeys(("online", "degraded", "offline"), 0)
        workers = {s.value: 0 for s in WorkerStatus}
        for pool in self.ctx.cluster.pools():
            pools[str(pool.status)] += 1
            for w in pool.workers:
                workers[str(w.status)] += 1
        for k, v in pools.items():
            self.ctx.metrics.pools.labels(k).set(v)
        for k, v in workers.items():
            self.ctx.metrics.workers.labels(k).set(v)

    async def sweep_forever(self) -> None:
        """Sweep every half heartbeat interval (between 50 ms and 1 s) and wake the
        scheduler (its timer event)."""
        period = max(0.05, min(1.0, self.ctx.config.heartbeat.interval_s / 2))
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep()
            except Exception:
                log("http.error", "pool sweep failed", level=logging.ERROR, exc_info=True)
            self.ctx.cluster.changed()

    # -- stored inventory ------------------------------------------------------------------

    async def restore(self) -> None:
        """Load the stored pool inventory (a daemon taking the lead, or restarting): pools
        this daemon does not know yet enter the model ``offline`` — shown by the views, given
        no work — and stay so until they heartbeat or register here. Never raises: a store
        that cannot be read is logged (the pools come back with their heartbeats)."""
        try:
            records = await self.ctx.store.load_pools()
        except Exception as exc:
            log(
                "pool.restored",
                f"the stored pool inventory could not be read: {exc}",
                level=logging.ERROR,
            )
            return
        restored = []
        for record in records:
            if self.ctx.cluster.pool(record.pool_id) is not None:
                continue  # registered here meanwhile: fresher than the store
            try:
                info = PoolInfo.model_validate_json(record.inventory)
            except ValueError as exc:
                log(
                    "pool.restored",
                    f"stored inventory of pool {record.pool_id} is unreadable: {exc}",
                    level=logging.WARNING,
                    pool_id=record.pool_id,
                )
                continue
            info = info.model_copy(update={"status": PoolStatus.OFFLINE})
            self._restored.add(info.pool_id)
            if record.token:
                self.pool_tokens.setdefault(info.pool_id, record.token)
            self.ctx.cluster.mutate(functools.partial(_restore_pool, info))
            restored.append(info.pool_id)
        if restored:
            log("pool.restored", "stored pool inventory loaded (offline)", pools=restored)
        self._gauges()
        await self.ctx.cluster.settled()

    def _save(self, pool_id: str, *, now: bool, removed: bool = False) -> None:
        """Store the pool's inventory (``now``: at once, else with the next flush)."""
        if removed:
            self._dirty.discard(pool_id)
            self._removed.add(pool_id)
        else:
            self._removed.discard(pool_id)
            self._dirty.add(pool_id)
        if now:
            self._flush_now.set()
        if self._flusher is None or self._flusher.done():
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # called outside the daemon's loop (model-only tests)
                return
            self._flusher = self.ctx.tasks.spawn(self._flush_forever(), name="pool-flush")

    async def flush(self) -> None:
        """Store the inventories changed since the last flush (failures are logged and the
        pools kept for the next one)."""
        dirty, self._dirty = self._dirty, set()
        removed, self._removed = self._removed, set()
        records = []
        for pool_id in sorted(dirty):
            info = self.ctx.cluster.pool(pool_id)
            if info is None or pool_id in self._restored:
                continue
            records.append(
                PoolRecord(
                    pool_id=pool_id,
                    inventory=info.model_dump_json(),
                    last_heartbeat=info.last_heartbeat,
                    token=self.pool_tokens.get(pool_id, ""),
                )
            )
        if not records and not removed:
            return
        try:
            await self.ctx.store.save_pools(records, sorted(removed))
        except Exception as exc:
            self._dirty |= dirty - self._removed
            self._removed |= removed - self._dirty
            log(
                "http.error",
                f"storing the pool inventory failed: {exc}",
                level=logging.WARNING,
                pools=sorted(dirty | removed),
            )

    async def _flush_forever(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that comes
            # as the event is set, and the daemon's stop would wait for this task forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._flush_now.wait()
            self._flush_now.clear()
            await self.flush()

    # -- worker start / eviction (executed for the scheduler) ------------------------------

    async def start_worker(self, pool_id: str, gpu_id: str, model_ref: str) -> str | None:
        """Ask a pool to start a worker; returns the new worker id or ``None`` on refusal."""
        pool = self.ctx.cluster.pool(pool_id)
        if pool is None:
            return None
        log("pool.worker_start", "starting worker", pool_id=pool_id, gpu_id=gpu_id, model=model_ref)
        try:
            worker_id = await self.ctx.pool_client.start_worker(
                pool.endpoint,
                pool_id=pool_id,
                model_ref=model_ref,
                gpu_id=gpu_id,
                correlation_id=uuid.uuid4().hex,
            )
        except PoolRequestFailed as exc:
            self.ctx.metrics.worker_starts.labels(exc.code).inc()
            log(
                "pool.worker_start",
                exc.message,
                level=logging.WARNING,
                pool_id=pool_id,
                code=exc.code,
            )
            # A model the catalog gives no VRAM for looks as if it fitted anywhere: the
            # pool's figure lets the policy plan an eviction or see that it can never fit.
            needed = exc.details.get("vram_needed_bytes")
            if isinstance(needed, int) and needed > 0:
                self.ctx.cluster.mutate(lambda s: s.learn_model_vram(model_ref, needed))
            return None
        self.ctx.metrics.worker_starts.labels("ok").inc()
        return worker_id

    async def evict_worker(self, pool_id: str, worker_id: str, reason: str) -> bool:
        """Ask a pool to stop an idle worker (never one the daemon runs jobs on)."""
        if self.ctx.cluster.state.jobs_on_worker(worker_id):
            return False
        pool = self.ctx.cluster.pool(pool_id)
        if pool is None:
            return False
        log(
            "pool.worker_stop",
            "evicting worker",
            pool_id=pool_id,
            worker_id=worker_id,
            reason=reason,
        )
        try:
            await self.ctx.pool_client.stop_worker(
                pool.endpoint, worker_id, correlation_id=uuid.uuid4().hex
            )
        except PoolRequestFailed as exc:
            log("pool.worker_stop", exc.message, level=logging.WARNING, code=exc.code)
            return False
        self.ctx.metrics.worker_evictions.labels(reason or "policy").inc()
        return True
