"""The built-in scheduler's dispatch pass: queued jobs to free workers, in queue order.

For order class 0 then 1: take the first model in the snapshot's *dispatchable* index
(models with a queued job and a free ready worker, keyed by their best job), take that
model's best job (best tenant head, per the queue order), check the tenant's running quota,
and hand the job to the model's best free worker (placement key; workers of degraded pools
only when the model has no free worker on an online pool). Re-seat the model and the worker
with their next keys and repeat until no model has both a job and a free worker (skipping
workers being drained). O(log n) per dispatch; models without a free worker are never
looked at, so they do not block the others.
"""

from __future__ import annotations

from orchestrator_core.errors import ErrorCode
from orchestrator_core.scheduling.cycle import Cycle, Merge
from orchestrator_core.scheduling.decisions import Dispatch, Reject

__all__ = ["dispatch_pass"]


def dispatch_pass(cycle: Cycle) -> None:
    """Add this cycle's dispatches (and quota rejections) to ``cycle.actions``."""
    snap = cycle.snap
    enforce = snap.enforce_quotas
    for cls in (0, 1):
        models = Merge(snap.dispatchable_models(cls))
        while not cycle.full():
            top = models.peek()
            if top is None:
                break
            model_ref: str = top[1]
            merges = cycle.worker_merges(model_ref)
            top_worker = None if merges is None else cycle.top_worker(merges)
            if top_worker is None:
                models.pop()
                continue
            groups = cycle.group_merge(model_ref, cls)
            head = groups.peek()
            if head is None:
                models.pop()
                continue
            tenant: str = head[1]
            where = (model_ref, tenant, cls)
            at = cycle.consumed[where]
            job_id: str = snap.tenant_jobs(model_ref, tenant, cls)[at][2]
            if enforce and _over_quota(cycle, models, groups, where, job_id):
                continue
            _dispatch(cycle, job_id, top_worker)
            cycle.tenant_started[tenant] += 1
            cycle.dispatched[model_ref] += 1
            _consume(cycle, models, groups, where, at)


def _over_quota(
    cycle: Cycle, models: Merge, groups: Merge, where: tuple[str, str, int], job_id: str
) -> bool:
    """If the job's tenant is at its running quota: reject the job (``reject``) or let the
    tenant wait for the rest of the cycle (``wait``), and return True."""
    snap = cycle.snap
    model_ref, tenant, _cls = where
    quota = snap.tenant(tenant)
    running = quota.running + cycle.tenant_started[tenant]
    if quota.max_running is None or running < quota.max_running:
        return False
    if snap.quota_action == "reject":
        cycle.actions.append(
            Reject(
                job_id,
                ErrorCode.QUOTA_EXCEEDED,
                f"tenant {tenant!r} is at its quota of {quota.max_running} running jobs",
                explanation={
                    "reason": "quota_exceeded",
                    "tenant_id": tenant,
                    "max_running": quota.max_running,
                    "running": running,
                },
            )
        )
        cycle.rejected.add(job_id)
        _consume(cycle, models, groups, where, cycle.consumed[where])
    else:
        groups.pop()  # this tenant waits for the rest of the cycle
        models.pop()
        nxt = groups.peek()
        if nxt is not None:
            models.push((nxt[0], model_ref))
    return True


def _dispatch(cycle: Cycle, job_id: str, top_worker: tuple[Merge, str]) -> None:
    """Hand ``job_id`` to the best worker of ``top_worker``'s merge and re-seat that worker
    with its next key if it has a slot left."""
    snap = cycle.snap
    placement = snap.placement
    merge, pool_status = top_worker
    key, worker_id = merge.pop()
    worker = snap.worker_record(worker_id)
    qj = snap.job(job_id)
    assert worker is not None
    assert qj is not None
    cycle.assigned[worker_id] += 1
    active = worker.active() + cycle.assigned[worker_id]
    if active < worker.max_concurrency:
        cycle.seq += 1
        load = active / worker.max_concurrency
        free = snap.worker_gpu_free(worker)
        merge.push((placement.key(load, free, cycle.seq, worker_id), worker_id))
    explanation = {
        "ordering": snap.order_name,
        "class": qj.class_name,
        "key": [qj.tag, qj.seq],
        "filter": {
            "model_ref": qj.model_ref,
            "pool_status": pool_status,
            "free_workers": len(merge.sl),
        },
        "placement": placement.name,
        "score": placement.describe(key),
        "runners_up": [
            {"worker_id": wid, "score": placement.describe(k)}
            for k, wid in merge.upcoming(cycle.limits.runners_up)
        ],
    }
    cycle.actions.append(Dispatch(job_id, worker_id, worker.pool_id, explanation))


def _consume(
    cycle: Cycle, models: Merge, groups: Merge, where: tuple[str, str, int], at: int
) -> None:
    """The head job of (model, tenant, cls) is taken: advance the group and the model."""
    model_ref, tenant, cls = where
    cycle.consumed[where] = at + 1
    groups.pop()
    lst = cycle.snap.tenant_jobs(model_ref, tenant, cls)
    if at + 1 < len(lst):
        nxt = lst[at + 1]
        groups.push(((nxt[0], nxt[1]), tenant))
    models.pop()
    head = groups.peek()
    if head is not None:
        models.push((head[0], model_ref))
