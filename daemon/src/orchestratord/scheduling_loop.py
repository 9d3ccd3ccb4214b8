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
from typing import Annotated

from orchestrator_core import ConfigInvalid, ErrorCode, OrchestratorConfig, RequestInvalid
from orchestrator_core.api import ApiModel
from orchestrator_core.errors import FieldError
from pydantic import BaseModel, Field

from orchestratord.logs import log
from orchestratord.runtime import Orchestrator

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


def _invalid(problems: list[str]) -> RequestInvalid:
    errors = []
    for problem in problems:
        name = problem.split(":", 1)[0].removeprefix("scheduler.")
        errors.append(
            FieldError(name, ErrorCode.INVALID_PARAMETER, problem.replace("scheduler.", ""))
        )
    return RequestInvalid(errors)


class SchedulingLoop:
    """Drives :class:`Orchestrator` with the configured policy (see the module docstring)."""

    def __init__(self, orch: Orchestrator, *, debounce_s: float = 0.002) -> None:
        self.orch = orch
        self.debounce_s = debounce_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        cfg = orch.config.scheduler
        self._view = SchedulerView(policy=cfg.policy, placement=cfg.placement, since=orch.clock())

    def attach(self) -> None:
        """Hook the loop to the orchestrator's change notifications."""
        self.orch.on_change = self.kick

    def kick(self) -> None:
        """Something changed: run a pass soon."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop task."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduling")
        self.kick()

    async def stop(self) -> None:
        """Stop the loop task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def view(self) -> SchedulerView:
        """The active policy."""
        return self._view.model_copy()

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
        except ConfigInvalid as exc:
            raise _invalid(exc.problems) from None
        if config.scheduler.policy in ("rhai", "rules"):
            raise _invalid(
                [f"policy: {config.scheduler.policy!r} policies are not available in this build"]
            )
        self._view = SchedulerView(
            policy=config.scheduler.policy,
            placement=config.scheduler.placement,
            since=self.orch.clock(),
        )
        log(
            "scheduler.swapped",
            "policy replaced",
            policy=self._view.policy,
            placement=self._view.placement,
        )
        self.kick()
        return self.view()

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
            except Exception:
                log("scheduler.error", "scheduling pass failed", level=logging.ERROR, exc_info=True)
                again = False
            self.orch.metrics.scheduling_latency.observe(time.perf_counter() - t0)
            if again:
                self._wake.set()

    async def run_pass(self) -> bool:
        """One pass; True if it changed something (another pass may find more to do)."""
        return self._interim_pass()

    def _interim_pass(self) -> bool:
        # INTERIM until orchestrator_core.scheduling lands: first eligible job to the first
        # free worker serving its model. Replaced by the core policy; not a policy of its own.
        free: dict[str, list[tuple[str, str]]] = {}
        for pool in self.orch.registry.list():
            if str(pool.status) == "offline":
                continue
            for w in pool.workers:
                slots = w.max_concurrency - self.orch.worker_load(pool.pool_id, w.worker_id)
                if str(w.status) in ("ready", "busy") and slots > 0:
                    free.setdefault(w.model_ref, []).extend([(pool.pool_id, w.worker_id)] * slots)
        changed = False
        for job in list(self.orch.eligible_jobs(self.orch.config.scheduler.snapshot_window)):
            candidates = free.get(job.model_ref)
            if candidates:
                pool_id, worker_id = candidates.pop(0)
                if self.orch.dispatch(job.job_id, pool_id, worker_id) is None:
                    changed = True
        return changed
