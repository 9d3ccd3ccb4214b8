"""The scheduling loop: event-driven, runs the configured policy, executes its decisions.

Pipeline of one pass (triggered by a new job, a freed worker, a heartbeat or the timer):

1. debounce: wait for the burst of triggers to settle (a few ms), coalescing them;
2. take a snapshot of the cluster state;
3. call the policy in a worker thread with a timeout, so a slow policy never blocks the
   event loop;
4. validate each decision against reality *now* and execute it — dispatch, start a worker,
   evict a worker, reject a job; drop (and log, and count) any decision that no longer fits;
5. run again at once if the pass dispatched anything (there may be more to do), else sleep
   until the next trigger or the timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from orchestrator_core import (
    ConfigInvalid,
    ErrorCode,
    JobStatus,
    OrchestratorConfig,
    PoolInfo,
    PoolStatus,
    RequestInvalid,
    WorkerStatus,
)
from orchestrator_core.api import ApiModel
from orchestrator_core.errors import FieldError
from orchestrator_core.rhai.scheduler import PolicyCall
from orchestrator_core.rhai.tools import build_policy_scheduler, policy_registry
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
from orchestrator_core.scheduling.state import ClusterState
from orchestrator_core.scheduling.validation import validate_decision
from pydantic import BaseModel, Field

from orchestratord.logs import log
from orchestratord.runtime import ClusterListener, Orchestrator

__all__ = ["SchedulerUpdate", "SchedulerView", "SchedulingLoop"]


class SchedulerUpdate(ApiModel):
    """``PUT /v2/scheduler``: the policy to activate (validated before it replaces the
    active one). ``script`` is Rhai source for ``policy = "rhai"``; ``rules`` is YAML for
    ``policy = "rules"``."""

    policy: Annotated[str, Field(min_length=1, max_length=64)]
    placement: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    script: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None
    rules: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None


class SchedulerView(BaseModel):
    """``GET /v2/scheduler``: the active policy and its counters."""

    policy: str
    placement: str
    since: float = Field(description="Unix time the policy became active")
    passes: int = 0
    errors: int = 0
    fallbacks: int = 0
    script: str | None = None
    rules: str | None = None


def _read_policy_file(path: str) -> str:
    """Policy files named by ``scheduler.script`` / ``scheduler.rules`` (``~`` expanded)."""
    return Path(path).expanduser().read_text(encoding="utf-8")


def _invalid(problems: list[str]) -> RequestInvalid:
    errors = []
    for problem in problems:
        name = problem.split(":", 1)[0].removeprefix("scheduler.")
        errors.append(
            FieldError(name, ErrorCode.INVALID_PARAMETER, problem.replace("scheduler.", ""))
        )
    return RequestInvalid(errors)


class SchedulingLoop(ClusterListener):
    """Drives :class:`Orchestrator` with the configured policy (see the module docstring).

    It owns the :class:`~orchestrator_core.scheduling.state.ClusterState` and keeps it in
    step with the runtime (it is the runtime's :class:`ClusterListener`). While a policy call
    runs in its thread, changes to the state are deferred and applied when the call returns,
    so the policy reads a consistent state and the event loop never waits for it.
    """

    def __init__(
        self,
        orch: Orchestrator,
        *,
        debounce_s: float = 0.002,
        registry: SchedulerRegistry | None = None,
    ) -> None:
        self.orch = orch
        self.debounce_s = debounce_s
        self.registry = registry or policy_registry(
            read_file=_read_policy_file, on_call=self._on_policy_call
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = False
        self._deferred: list[Callable[[], object]] = []
        self._starts: set[asyncio.Task[None]] = set()
        self._evicting: dict[str, set[asyncio.Task[None]]] = {}
        self._start_backoff: dict[tuple[str, str], tuple[float, float]] = {}
        """(pool_id, model_ref) -> (retry not before, last delay): a pool that refused a start
        is not asked again for the same model at once (1 s, doubling up to 60 s)."""
        """pool_id -> evictions in flight there (a start on that pool waits for them)."""
        cfg = orch.config
        self.timeout_s = max(0.25, cfg.scheduler.budget_ms * 4 / 1000)
        self._view = SchedulerView(
            policy=cfg.scheduler.policy, placement=cfg.scheduler.placement, since=orch.clock()
        )
        self.state = ClusterState.from_config(cfg)
        self.scheduler: Scheduler = build_scheduler(cfg, self.registry)
        self._view.policy = self.scheduler.name or cfg.scheduler.policy

    # -- wiring ----------------------------------------------------------------------------

    def _on_policy_call(self, call: PolicyCall) -> None:
        # Runs on the policy's thread: counters only.
        if call.failure is not None:
            self._view.errors += 1
            self._view.fallbacks += 1
            self.orch.metrics.scheduler_errors.labels(call.failure.kind).inc()
            self.orch.metrics.scheduler_fallbacks.inc()

    def attach(self) -> None:
        """Become the orchestrator's listener."""
        self.orch.listener = self

    def kick(self) -> None:
        """Something changed: run a pass soon."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop task."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduling")
        self.kick()

    async def stop(self) -> None:
        """Stop the loop task and pending worker starts."""
        if self._timer is not None:
            self._timer.cancel()
        for task in [self._task, *self._starts]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = None

    def view(self) -> SchedulerView:
        """The active policy."""
        return self._view.model_copy()

    # -- ClusterListener: keep the state in step (deferred during a policy call) -----------

    def _mutate(self, fn: Callable[[], object]) -> None:
        if self._in_flight:
            self._deferred.append(fn)
            return
        try:
            fn()
        except Exception:  # the state must never take the runtime down
            log(
                "scheduler.error", "cluster state update failed", level=logging.ERROR, exc_info=True
            )

    def job_queued(self, job: Any) -> None:
        """See :class:`ClusterListener`."""
        self._mutate(lambda: None if self.state.get_job(job.job_id) else self._add(job))

    def _add(self, job: Any) -> None:
        if job.status is JobStatus.QUEUED and not self.state.is_running(job.job_id):
            self.state.add_job(job)

    def job_unqueued(self, job_id: str) -> None:
        """See :class:`ClusterListener`."""
        self._mutate(lambda: self.state.remove_job(job_id) if self.state.get_job(job_id) else None)

    def job_dispatched(self, job_id: str, worker_id: str, now: float) -> None:
        """See :class:`ClusterListener`."""

        def apply() -> None:
            if self.state.get_job(job_id) is not None:
                self.state.job_dispatched(job_id, worker_id, now=now)

        self._mutate(apply)

    def job_released(self, job_id: str, now: float) -> None:
        """See :class:`ClusterListener`."""
        self._mutate(lambda: self.state.job_finished(job_id, now=now))

    def pool_updated(self, pool: PoolInfo) -> None:
        """See :class:`ClusterListener`."""
        self._mutate(lambda: self.state.upsert_pool(pool))

    def pool_removed(self, pool_id: str) -> None:
        """See :class:`ClusterListener`."""
        self._mutate(
            lambda: self.state.remove_pool(pool_id) if self.state.pool_view(pool_id) else None
        )

    def pool_status(self, pool_id: str, status: PoolStatus) -> None:
        """See :class:`ClusterListener`."""
        self._mutate(
            lambda: (
                self.state.set_pool_status(pool_id, status)
                if self.state.pool_view(pool_id)
                else None
            )
        )

    def worker_failed(self, worker_id: str) -> None:
        """See :class:`ClusterListener` (the next heartbeat's report replaces the mark)."""
        self._mutate(
            lambda: (
                self.state.mark_worker(worker_id, WorkerStatus.FAILED)
                if self.state.worker_view(worker_id)
                else None
            )
        )

    def model_vram_learned(self, model_ref: str, vram_bytes: int) -> None:
        """See :class:`ClusterListener`."""
        self._mutate(lambda: self.state.learn_model_vram(model_ref, vram_bytes))

    def changed(self) -> None:
        """See :class:`ClusterListener`."""
        self.kick()

    def explain(self, job_id: str) -> dict[str, Any] | None:
        """See :class:`ClusterListener` (the built-in policy can explain a waiting job)."""
        explain = getattr(self.scheduler, "explain_job", None)
        if explain is None or self._in_flight:
            return None
        result: dict[str, Any] = explain(self.state.snapshot(self.orch.clock()), job_id)
        return result

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.debounce_s:
                await asyncio.sleep(self.debounce_s)
                self._wake.clear()
            t0 = time.perf_counter()
            try:
                again = await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log("scheduler.error", "scheduling pass failed", level=logging.ERROR, exc_info=True)
                again = False
            self.orch.metrics.scheduling_latency.observe(time.perf_counter() - t0)
            if again:
                self._wake.set()

    async def run_pass(self) -> bool:
        """One pass; True if it changed something (another pass may find more to do)."""
        if not self.orch.ready:
            return False
        decision = await self._decide()
        if decision is None:
            return False
        return await self._execute(decision)

    async def _decide(self) -> Decision | None:
        scheduler = self.scheduler
        snapshot = self.state.snapshot(self.orch.clock())
        self._in_flight = True
        try:
            task = asyncio.ensure_future(asyncio.to_thread(scheduler.schedule, snapshot))
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
            if not done:
                self._view.errors += 1
                self.orch.metrics.scheduler_errors.labels("slow").inc()
                log(
                    "scheduler.error",
                    f"policy call exceeded {self.timeout_s:g}s",
                    level=logging.WARNING,
                    policy=scheduler.name,
                )
                await asyncio.wait({task})  # the state stays frozen until it returns
            decision = task.result()
        except Exception as exc:
            self._view.errors += 1
            self.orch.metrics.scheduler_errors.labels(type(exc).__name__).inc()
            log(
                "scheduler.error",
                f"policy call failed: {exc}",
                level=logging.ERROR,
                policy=scheduler.name,
            )
            decision = None
        finally:
            self._in_flight = False
            deferred, self._deferred = self._deferred, []
            for fn in deferred:
                self._mutate(fn)
        self._view.passes += 1
        return decision

    async def _execute(self, decision: Decision) -> bool:
        actions = list(iter_actions(decision))
        if not any(not isinstance(a, Wait) for a in actions):
            for act in actions:
                self._wait(act)  # type: ignore[arg-type]
            return False
        # Reality may have moved during the call: check the decision against it now and
        # drop (log, count) what no longer fits; the rest is executed in order.
        refused = {
            r.action_index if r.action_index is not None else 0: r
            for r in validate_decision(decision, self.state.snapshot(self.orch.clock()))
        }
        changed = False
        for i, act in enumerate(actions):
            if i in refused:
                self._drop(act, refused[i].message, str(refused[i].code))
                continue
            changed = await self._one(act) or changed
        return changed

    def _drop(self, act: Action, why: str, kind: str) -> None:
        self.orch.metrics.decisions_dropped.labels(act.action).inc()
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
        view = self.state.worker_view(worker_id)
        return None if view is None else view.pool_id

    async def _one(self, act: Action) -> bool:
        orch = self.orch
        if isinstance(act, Dispatch):
            pool_id = act.pool_id or self._pool_of(act.worker_id)
            why = (
                "unknown worker"
                if pool_id is None
                else orch.dispatch(act.job_id, pool_id, act.worker_id)
            )
            if why is not None:
                self._drop(act, why, "reality")
                return False
            live = orch.active.get(act.job_id)
            if live is not None and act.explanation:
                live.explanation = dict(act.explanation)
            return True
        if isinstance(act, Reject):
            if not await orch.reject(act.job_id, act.code, act.message or str(act.code)):
                self._drop(act, "job is not queued", "reality")
                return False
            return True
        if isinstance(act, StartWorker):
            not_before, _ = self._start_backoff.get((act.pool_id, act.model_ref), (0.0, 0.0))
            if orch.clock() < not_before:
                self._drop(act, "the pool refused this model recently", "backoff")
                self._retry_at(not_before - orch.clock())
                return False
            placeholder = self.state.start_requested(
                act.pool_id, act.gpu_id, act.model_ref, now=orch.clock()
            )
            task = asyncio.get_running_loop().create_task(self._start(act, placeholder))
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)
            return True
        if isinstance(act, EvictWorker):
            pool_id = act.pool_id or self._pool_of(act.worker_id)
            if pool_id is None or orch.worker_load(pool_id, act.worker_id) > 0:
                self._drop(act, "worker gone or busy", "reality")
                return False
            self.state.stop_requested(act.worker_id)
            task = asyncio.get_running_loop().create_task(
                self._evict(pool_id, act.worker_id, act.reason or "policy")
            )
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)
            evicting = self._evicting.setdefault(pool_id, set())
            evicting.add(task)
            task.add_done_callback(evicting.discard)
            return True
        self._wait(act)
        return False

    async def _start(self, act: StartWorker, placeholder: str) -> None:
        # The policy counted the VRAM of workers it evicts as free: the pool frees it only
        # once their engines have stopped, so a start sent earlier would be refused.
        evicting = list(self._evicting.get(act.pool_id, ()))
        if evicting:
            await asyncio.wait(evicting)
        # The pool is asked for the model by its own name (it may know it by a catalog alias).
        model = self.state.pool_model_name(act.pool_id, act.model_ref)
        worker_id = await self.orch.start_worker(act.pool_id, act.gpu_id, model)

        key = (act.pool_id, act.model_ref)
        if worker_id is None:
            _, last = self._start_backoff.get(key, (0.0, 0.0))
            delay = min(60.0, max(1.0, 2 * last))
            self._start_backoff[key] = (self.orch.clock() + delay, delay)
        else:
            self._start_backoff.pop(key, None)

        def settle() -> None:
            if self.state.worker_view(placeholder) is None:
                return  # the pool went away meanwhile, and its placeholder with it
            if worker_id is None:
                self.state.start_failed(placeholder)
            else:
                self.state.start_confirmed(placeholder, worker_id)

        self._mutate(settle)
        self.kick()

    async def _evict(self, pool_id: str, worker_id: str, reason: str) -> None:
        await self.orch.evict_worker(pool_id, worker_id, reason)
        self.kick()

    # -- hot swap --------------------------------------------------------------------------

    async def swap(self, update: SchedulerUpdate) -> SchedulerView:
        """Validate ``update`` and make it the active policy. Problems are reported as
        INVALID_PARAMETER naming the field; the active policy is unchanged then."""
        current = self.orch.config.scheduler
        section = current.model_dump()
        section["policy"] = update.policy
        if update.placement is not None:
            section["placement"] = update.placement
        # The configuration names policy *files*; a PUT carries the source itself.
        section["script"] = "<request>" if update.script is not None else None
        section["rules"] = "<request>" if update.rules is not None else None
        data = self.orch.config.to_toml_dict()
        data["scheduler"] = {k: v for k, v in section.items() if v is not None}
        try:
            config = OrchestratorConfig.from_mapping(data, env={})
            if config.scheduler.policy in ("rhai", "rules"):
                scheduler = build_policy_scheduler(
                    config,
                    text=update.script if config.scheduler.policy == "rhai" else update.rules,
                    registry=self.registry,
                    on_call=self._on_policy_call,
                )
            else:
                scheduler = build_scheduler(config, self.registry)
        except ConfigInvalid as exc:
            raise _invalid(exc.problems) from None
        while self._in_flight:  # never swap under a running policy call
            await asyncio.sleep(0.001)
        self.state.reindex(order=build_queue_order(config), placement=build_placement(config))
        self.scheduler = scheduler
        self._view = SchedulerView(
            policy=scheduler.name or config.scheduler.policy,
            placement=config.scheduler.placement,
            since=self.orch.clock(),
            script=update.script,
            rules=update.rules,
        )
        log(
            "scheduler.swapped",
            "policy replaced",
            policy=self._view.policy,
            placement=self._view.placement,
        )
        self.kick()
        return self.view()
