"""The scheduling loop: event-driven, runs the active policy, executes its decisions.

Pipeline of one pass (triggered by a change to the cluster model or the sweep timer):

1. debounce: when passes follow each other closely, wait for the burst of triggers to
   settle (a few ms), coalescing them; after a quiet spell, run at once;
2. take a snapshot of the cluster model;
3. call the policy in a worker thread with a timeout, so a slow policy never blocks the
   event loop; the model defers changes meanwhile (:meth:`Cluster.frozen`);
4. validate each decision against the model *now* and execute it — dispatch, start a
   worker, evict a worker, reject a job; drop (log, count) any decision that no longer fits;
5. run again at once if the pass changed anything, else sleep until the next trigger.

Worker starts wait for the evictions in flight on their pool (the pool frees VRAM only once
an engine has stopped); a pool that refused a start is not asked again for the same model
at once (1 s, doubling up to 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from orchestrator_core import OrchestratorConfig
from orchestrator_core.rhai.scheduler import PolicyCall
from orchestrator_core.scheduling.decisions import (
    Action,
    Decision,
    Dispatch,
    EvictWorker,
    Reject,
    StartWorker,
    Wait,
    iter_actions,
)
from orchestrator_core.scheduling.scheduler import (
    Scheduler,
    SchedulerRegistry,
    build_placement,
    build_queue_order,
    build_scheduler,
)
from orchestrator_core.scheduling.validation import validate_decision

from orchestratord.auth import Principal
from orchestratord.logs import log
from orchestratord.services.context import Context
from orchestratord.services.fleet import Fleet
from orchestratord.services.lifecycle import Lifecycle
from orchestratord.services.policies import (
    SchedulerUpdate,
    SchedulerView,
    build_policy,
    default_registry,
)
from orchestratord.services.relay import Relay
from orchestratord.store import PolicyRecord

__all__ = ["SchedulingLoop"]


class SchedulingLoop:
    """Drives the daemon with the active policy (see the module docstring)."""

    def __init__(
        self,
        ctx: Context,
        *,
        relay: Relay,
        lifecycle: Lifecycle,
        fleet: Fleet,
        debounce_s: float = 0.002,
        registry: SchedulerRegistry | None = None,
    ) -> None:
        self.ctx = ctx
        self.relay = relay
        self.lifecycle = lifecycle
        self.fleet = fleet
        self.debounce_s = debounce_s
        self._last_pass_end = 0.0
        self.registry = registry or default_registry(self._on_policy_call)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._call: asyncio.Future[Decision] | None = None
        """The policy call in flight (its thread cannot be interrupted)."""
        self._passing = False
        self._timer: asyncio.TimerHandle | None = None
        self._actions: set[asyncio.Task[None]] = set()
        self._evicting: dict[str, set[asyncio.Task[None]]] = {}
        """pool_id -> evictions in flight there (a start on that pool waits for them)."""
        self._start_backoff: dict[tuple[str, str], tuple[float, float]] = {}
        """(pool_id, model_ref) -> (retry not before, last delay)."""
        cfg = ctx.config
        self.timeout_s = max(0.25, cfg.scheduler.budget_ms * 4 / 1000)
        self.scheduler: Scheduler = build_scheduler(cfg, self.registry)
        self._view = SchedulerView(
            policy=self.scheduler.name or cfg.scheduler.policy,
            placement=cfg.scheduler.placement,
            since=ctx.clock(),
        )
        ctx.cluster.on_change(self.kick)
        self._swap_lock = asyncio.Lock()

    # -- wiring ----------------------------------------------------------------------------

    def _on_policy_call(self, call: PolicyCall) -> None:
        # Runs on the policy's thread: counters only.
        if call.failure is not None:
            self._view.errors += 1
            self._view.fallbacks += 1
            self.ctx.metrics.scheduler_errors.labels(call.failure.kind).inc()
            self.ctx.metrics.scheduler_fallbacks.inc()

    def kick(self) -> None:
        """Something changed: run a pass soon."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop task."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduling")
        self.kick()

    async def stop(self) -> None:
        """Stop the loop task and the worker starts and evictions in flight."""
        if self._timer is not None:
            self._timer.cancel()
        for task in [self._task, *self._actions]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = None
        if self._call is not None:  # let the thread finish: its result is dropped
            with contextlib.suppress(Exception):
                await self._call

    @property
    def idle(self) -> bool:
        """No pass is running or due (for tests that wait for the daemon to settle)."""
        return not self._passing and not self._wake.is_set()

    def view(self) -> SchedulerView:
        """The active policy."""
        return self._view.model_copy()

    def explain(self, job_id: str) -> dict[str, Any] | None:
        """Why a queued job waits, if the active policy can tell (the built-in can)."""
        explain = getattr(self.scheduler, "explain_job", None)
        if explain is None or self.ctx.cluster.is_frozen:
            return None
        result: dict[str, Any] = explain(self.ctx.cluster.state.snapshot(self.ctx.clock()), job_id)
        return result

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.debounce_s:
                # Busy (the last pass ended moments ago): let the burst of triggers settle.
                # Idle: go at once, after the callbacks already due (no latency added).
                idle = time.perf_counter() - self._last_pass_end >= self.debounce_s
                await asyncio.sleep(0 if idle else self.debounce_s)
                self._wake.clear()
            t0 = time.perf_counter()
            self._passing = True
            try:
                again = await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log("scheduler.error", "scheduling pass failed", level=logging.ERROR, exc_info=True)
                again = False
            finally:
                self._passing = False
            self._last_pass_end = time.perf_counter()
            self.ctx.metrics.scheduling_latency.observe(self._last_pass_end - t0)
            if again:
                self._wake.set()

    async def run_pass(self) -> bool:
        """One pass; True if it changed something (another pass may find more to do)."""
        if not self.ctx.ready:
            return False
        decision = await self._decide()
        if decision is None:
            return False
        return await self._execute(decision)

    async def _decide(self) -> Decision | None:
        scheduler = self.scheduler
        try:
            with self.ctx.cluster.frozen() as state:
                snapshot = state.snapshot(self.ctx.clock())
                self._call = task = asyncio.ensure_future(
                    asyncio.to_thread(scheduler.schedule, snapshot)
                )
                done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
                if not done:
                    self._view.errors += 1
                    self.ctx.metrics.scheduler_errors.labels("slow").inc()
                    log(
                        "scheduler.error",
                        f"policy call exceeded {self.timeout_s:g}s",
                        level=logging.WARNING,
                        policy=scheduler.name,
                    )
                    await asyncio.wait({task})  # the model stays frozen until it returns
                decision = task.result()
                self._call = None
        except Exception as exc:
            self._view.errors += 1
            self.ctx.metrics.scheduler_errors.labels(type(exc).__name__).inc()
            log(
                "scheduler.error",
                f"policy call failed: {exc}",
                level=logging.ERROR,
                policy=scheduler.name,
            )
            decision = None
        self._view.passes += 1
        return decision

    async def _execute(self, decision: Decision) -> bool:
        actions = list(iter_actions(decision))
        if all(isinstance(a, Wait) for a in actions):
            for act in actions:
                self._wait(act)  # type: ignore[arg-type]
            return False
        # Reality may have moved during the call: check the decision against it now and
        # drop (log, count) what no longer fits; the rest is executed in order.
        refused = {
            r.action_index if r.action_index is not None else 0: r
            for r in validate_decision(decision, self.ctx.cluster.state.snapshot(self.ctx.clock()))
        }
        changed = False
        for i, act in enumerate(actions):
            if i in refused:
                self._drop(act, refused[i].message, str(refused[i].code))
                continue
            changed = await self._one(act) or changed
        return changed

    def _drop(self, act: Action, why: str, kind: str) -> None:
        self.ctx.metrics.decisions_dropped.labels(act.action).inc()
        log("scheduler.decision_dropped", why, level=logging.INFO, action=act.action, reason=kind)

    def _wait(self, act: Wait) -> None:
        if act.retry_after_ms is not None:
            self._retry_at(act.retry_after_ms / 1000)

    def _retry_at(self, delay_s: float) -> None:
        """Run a pass after ``delay_s`` (at most 60 s) unless a timer is already set."""
        if self._timer is not None:
            return

        def due() -> None:
            self._timer = None
            self.kick()

        self._timer = asyncio.get_running_loop().call_later(min(60.0, max(0.0, delay_s)), due)

    def _pool_of(self, worker_id: str) -> str | None:
        view = self.ctx.cluster.state.worker_view(worker_id)
        return None if view is None else view.pool_id

    async def _one(self, act: Action) -> bool:
        if isinstance(act, Dispatch):
            return self._dispatch(act)
        if isinstance(act, Reject):
            if not await self.lifecycle.reject(act.job_id, act.code, act.message or str(act.code)):
                self._drop(act, "job is not queued", "reality")
                return False
            return True
        if isinstance(act, StartWorker):
            return self._start(act)
        if isinstance(act, EvictWorker):
            return self._evict(act)
        self._wait(act)
        return False

    def _dispatch(self, act: Dispatch) -> bool:
        pool_id = act.pool_id or self._pool_of(act.worker_id)
        why = (
            "unknown worker"
            if pool_id is None
            else self.relay.dispatch(act.job_id, pool_id, act.worker_id)
        )
        if why is not None:
            self._drop(act, why, "reality")
            return False
        live = self.ctx.jobs.get(act.job_id)
        if live is not None and act.explanation:
            live.explanation = dict(act.explanation)
        return True

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)
        return task

    def _start(self, act: StartWorker) -> bool:
        now = self.ctx.clock()
        not_before, _ = self._start_backoff.get((act.pool_id, act.model_ref), (0.0, 0.0))
        if now < not_before:
            self._drop(act, "the pool refused this model recently", "backoff")
            self._retry_at(not_before - now)
            return False
        placeholder = self.ctx.cluster.state.start_requested(
            act.pool_id, act.gpu_id, act.model_ref, now=now
        )
        self._spawn(self._start_worker(act, placeholder))
        return True

    def _evict(self, act: EvictWorker) -> bool:
        pool_id = act.pool_id or self._pool_of(act.worker_id)
        if pool_id is None or self.ctx.cluster.state.jobs_on_worker(act.worker_id):
            self._drop(act, "worker gone or busy", "reality")
            return False
        self.ctx.cluster.state.stop_requested(act.worker_id)
        task = self._spawn(self._evict_worker(pool_id, act.worker_id, act.reason or "policy"))
        evicting = self._evicting.setdefault(pool_id, set())
        evicting.add(task)
        task.add_done_callback(evicting.discard)
        return True

    async def _start_worker(self, act: StartWorker, placeholder: str) -> None:
        # The policy counted the VRAM of workers it evicts as free: the pool frees it only
        # once their engines have stopped, so a start sent earlier would be refused.
        evicting = list(self._evicting.get(act.pool_id, ()))
        if evicting:
            await asyncio.wait(evicting)
        # The pool is asked for the model by its own name (it may know it by a catalog alias).
        model = self.ctx.cluster.state.pool_model_name(act.pool_id, act.model_ref)
        worker_id = await self.fleet.start_worker(act.pool_id, act.gpu_id, model)
        key = (act.pool_id, act.model_ref)
        if worker_id is None:
            _, last = self._start_backoff.get(key, (0.0, 0.0))
            delay = min(60.0, max(1.0, 2 * last))
            self._start_backoff[key] = (self.ctx.clock() + delay, delay)
        else:
            self._start_backoff.pop(key, None)

        def settle(state: Any) -> None:
            if state.worker_view(placeholder) is None:
                return  # the pool went away meanwhile, and its placeholder with it
            if worker_id is None:
                state.start_failed(placeholder)
            else:
                state.start_confirmed(placeholder, worker_id)

        self.ctx.cluster.mutate(settle)
        self.kick()

    async def _evict_worker(self, pool_id: str, worker_id: str, reason: str) -> None:
        await self.fleet.evict_worker(pool_id, worker_id, reason)
        self.kick()

    # -- hot swap --------------------------------------------------------------------------

    async def swap(self, update: SchedulerUpdate, who: Principal | None = None) -> SchedulerView:
        """Validate ``update``, store it (durably: the next leader, or this daemon after a
        restart, re-applies it — :meth:`restore`) and make it the active policy. Problems
        are reported as INVALID_PARAMETER naming the field; the active policy is unchanged
        then, and when the store refuses the write (STORE_UNAVAILABLE, NOT_LEADER)."""
        scheduler, config = build_policy(
            self.ctx.config, update, self.registry, self._on_policy_call
        )
        async with self._swap_lock:  # versions are assigned one at a time
            stored = await self.ctx.store.active_policy()
            record = PolicyRecord(
                version=max(self._view.version, stored.version if stored else 0) + 1,
                policy=update.policy,
                placement=config.scheduler.placement,
                script=update.script,
                rules=update.rules,
                applied_at=self.ctx.clock(),
                applied_by="" if who is None else who.kind,
                fingerprint="" if who is None else who.fingerprint,
            )
            await self.ctx.store.save_policy(record)
            await self._activate(scheduler, config, record)
        log(
            "scheduler.swapped",
            "policy replaced",
            policy=self._view.policy,
            placement=self._view.placement,
            version=record.version,
            applied_by=self._view.applied_by,
        )
        return self.view()

    async def restore(self) -> None:
        """Re-apply the stored active policy (a daemon taking the lead, or restarting):
        the one last applied through ``PUT /v2/scheduler``, with its version, author and
        time; the configuration's policy when none is stored. Never raises: a stored policy
        that no longer compiles (e.g. after an upgrade), or a store that cannot be read, is
        logged and the configuration's policy is used."""
        async with self._swap_lock:
            await self._restore()

    async def _restore(self) -> None:
        cfg = self.ctx.config
        try:
            record = await self.ctx.store.active_policy()
        except Exception as exc:
            log(
                "scheduler.restore_failed",
                f"the stored policy could not be read ({exc}): using the configuration's",
                level=logging.ERROR,
            )
            record = None
        if record is not None:
            update = SchedulerUpdate(
                policy=record.policy,
                placement=record.placement,
                script=record.script,
                rules=record.rules,
            )
            try:
                scheduler, config = build_policy(cfg, update, self.registry, self._on_policy_call)
            except Exception as exc:
                log(
                    "scheduler.restore_failed",
                    f"stored policy version {record.version} does not apply ({exc}): "
                    "using the configuration's",
                    level=logging.ERROR,
                    policy=record.policy,
                    version=record.version,
                )
            else:
                await self._activate(scheduler, config, record)
                log(
                    "scheduler.restored",
                    "stored policy re-applied",
                    policy=self._view.policy,
                    placement=self._view.placement,
                    version=record.version,
                    applied_by=self._view.applied_by,
                )
                return
        # The configuration's policy (it may have been swapped out during an earlier term).
        base = PolicyRecord(
            version=0 if record is None else record.version,
            policy=cfg.scheduler.policy,
            placement=cfg.scheduler.placement,
            applied_at=self.ctx.clock(),
        )
        await self._activate(build_scheduler(cfg, self.registry), cfg, base)

    async def _activate(
        self, scheduler: Scheduler, config: OrchestratorConfig, record: PolicyRecord
    ) -> None:
        """Make ``scheduler`` (built from ``config``) the active policy, described by
        ``record``; the queue is re-ordered for it."""
        while self.ctx.cluster.is_frozen:  # never swap under a running policy call
            await asyncio.sleep(0.001)
        self.ctx.cluster.state.reindex(
            order=build_queue_order(config), placement=build_placement(config)
        )
        self.scheduler = scheduler
        who = " ".join(p for p in (record.applied_by, record.fingerprint) if p)
        self._view = SchedulerView(
            policy=scheduler.name or config.scheduler.policy,
            placement=config.scheduler.placement,
            since=record.applied_at,
            script=record.script,
            rules=record.rules,
            version=record.version,
            applied_by=who or None,
        )
        self.kick()
