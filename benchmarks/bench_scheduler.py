"""Benchmark: built-in scheduling decision latency as the queue and the fleet grow.

For each case (1e3 / 1e4 / 1e5 queued jobs over 50 models, 1e2 / 1e3 workers of single-slot
engines on 8-GPU pools) the cluster runs in steady state: every worker is busy but one, a
job finishes, the scheduler decides (timed: ``state.snapshot(now)`` + ``schedule``), the
decision is applied to the state (timed separately: what the daemon pays per event), and a
new job arrives so the queue keeps its size. The queue starts as that steady state leaves it
(one arrival per decision), so batch jobs reach the promotion age at the rate they arrive, as
in production (the backlog of already-due promotions is worked off, at most 256 per
snapshot, during warm-up). Every model has more queued jobs than workers, so each decision
also examines scale-out candidates (the GPUs are full, so none starts). The configuration is
the default one: priority order with promotion, least-loaded placement, LRU eviction.

Prints p50 / p99 / max per case, the initial fill (one cycle handing out work to every idle
worker, in batches of up to 256 actions) per dispatch, and the ratio of the largest case to
the smallest measured in the same run (these 2-core machines are noisy: compare the ratio,
don't trust absolute wall times). Goal: p99 < 1 ms at 1e4 jobs / 1e3 workers, ratio <= 3.

Run: .venv/bin/python benchmarks/bench_scheduler.py [--quick]
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time

from orchestrator_core import OrchestratorConfig
from orchestrator_core.scheduling import (
    ClusterState,
    Dispatch,
    Scheduler,
    build_scheduler,
    iter_actions,
)
from orchestrator_core.testing import GB, make_gpu, make_job, make_pool, make_worker

MODELS = 50
GPUS_PER_POOL = 8
TENANTS = 10
STEP_S = 0.05  # simulated time between decisions
PROMOTE_AFTER_S = 300.0


def config() -> OrchestratorConfig:
    return OrchestratorConfig.from_mapping(
        {
            "queue": {"capacity": -1, "promote_after_s": PROMOTE_AFTER_S},
            "models": [
                {"model_ref": f"m{i}", "vram_bytes": (4 + i % 8 * 4) * GB} for i in range(MODELS)
            ],
        }
    )


def build(jobs: int, workers: int, rng: random.Random, now: float) -> ClusterState:
    cfg = config()
    state = ClusterState.from_config(cfg)
    sizes = {m.model_ref: m.vram_bytes for m in cfg.models}
    for p in range(workers // GPUS_PER_POOL):
        gpus, ws = [], []
        for g in range(GPUS_PER_POOL):
            n = p * GPUS_PER_POOL + g
            model = f"m{n % MODELS}"
            # each GPU holds exactly its worker: nothing else fits, as in a full cluster
            gpus.append(make_gpu(f"g{g}", vram_gb=sizes[model] / GB, free_gb=0))
            ws.append(make_worker(f"w{n}", model, gpus=[f"g{g}"], vram_gb=sizes[model] / GB))
        state.upsert_pool(make_pool(f"p{p}", gpus=gpus, workers=ws, heartbeat_at=now))
    # the queue as the steady state leaves it: one arrival per decision, oldest first (with
    # a long queue most batch jobs are past the promotion age; warm-up promotes them)
    for j in range(jobs):
        state.add_job(new_job(f"j{j}", rng, now - (jobs - j) * STEP_S))
    return state


def new_job(job_id: str, rng: random.Random, at: float) -> object:
    return make_job(
        job_id,
        f"m{rng.randrange(MODELS)}",
        priority="batch" if rng.random() < 0.2 else "interactive",
        tenant=f"t{rng.randrange(TENANTS)}",
        queued_at=at,
    )


def fill(state: ClusterState, scheduler: Scheduler, now: float) -> tuple[int, float, list[str]]:
    """Cycles until every worker is busy: (dispatches, seconds, running job ids)."""
    running: list[str] = []
    t0 = time.perf_counter()
    while True:
        decision = scheduler.schedule(state.snapshot(now))
        state.apply(decision, now=now)
        done = [a.job_id for a in iter_actions(decision) if isinstance(a, Dispatch)]
        if not done:
            break
        running.extend(done)
    return len(running), time.perf_counter() - t0, running


def run_case(jobs: int, workers: int, iterations: int, seed: int = 7) -> dict[str, float]:
    rng = random.Random(seed)
    now = 1_000_000.0
    state = build(jobs, workers, rng, now)
    scheduler = build_scheduler(config())
    dispatched, fill_s, running = fill(state, scheduler, now)
    gc.collect()
    decide_ns: list[int] = []
    apply_ns: list[int] = []
    counter = jobs
    warmup = iterations // 10
    for i in range(iterations + warmup):
        now += STEP_S
        # a job finishes somewhere (event, untimed)
        finished = running.pop(rng.randrange(len(running)))
        state.job_finished(finished, now=now)
        t0 = time.perf_counter_ns()
        decision = scheduler.schedule(state.snapshot(now))
        t1 = time.perf_counter_ns()
        state.apply(decision, now=now)
        t2 = time.perf_counter_ns()
        running.extend(a.job_id for a in iter_actions(decision) if isinstance(a, Dispatch))
        # a new job arrives, keeping the queue at its size (event, untimed)
        while len(state) < jobs:
            state.add_job(new_job(f"j{counter}", rng, now))  # type: ignore[arg-type]
            counter += 1
        if i >= warmup:
            decide_ns.append(t1 - t0)
            apply_ns.append(t2 - t1)
    decide_ns.sort()
    apply_ns.sort()

    def pct(values: list[int], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] / 1000.0

    return {
        "p50": pct(decide_ns, 0.50),
        "p99": pct(decide_ns, 0.99),
        "max": decide_ns[-1] / 1000.0,
        "mean": statistics.fmean(decide_ns) / 1000.0,
        "apply_p50": pct(apply_ns, 0.50),
        "apply_p99": pct(apply_ns, 0.99),
        "fill_us_per_dispatch": fill_s * 1e6 / max(1, dispatched),
    }


def main() -> None:
    quick = "--quick" in sys.argv
    iterations = 500 if quick else 3000
    cases = [(j, w) for w in (100, 1000) for j in (1_000, 10_000, 100_000)]
    print(f"built-in scheduler, {MODELS} models, {iterations} decisions per case (after warm-up)")
    print("decide = snapshot + schedule; apply = ClusterState.apply of the decision (µs)")
    print(
        f"{'jobs':>8} {'workers':>8} {'p50':>8} {'p99':>8} {'max':>8} {'mean':>8}"
        f" {'apply50':>8} {'apply99':>8} {'fill/disp':>10}"
    )
    results: dict[tuple[int, int], dict[str, float]] = {}
    for jobs, workers in cases:
        r = run_case(jobs, workers, iterations)
        results[(jobs, workers)] = r
        print(
            f"{jobs:>8} {workers:>8} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}"
            f" {r['mean']:>8.1f} {r['apply_p50']:>8.1f} {r['apply_p99']:>8.1f}"
            f" {r['fill_us_per_dispatch']:>10.1f}"
        )
    small, large = results[(1_000, 100)], results[(100_000, 1000)]
    goal = results[(10_000, 1000)]
    print()
    print(
        f"ratio largest/smallest (1e5 jobs, 1e3 workers vs 1e3 jobs, 1e2 workers):"
        f" p50 {large['p50'] / small['p50']:.2f}, p99 {large['p99'] / small['p99']:.2f}"
        f" (goal <= 3)"
    )
    print(
        f"p99 at 1e4 jobs / 1e3 workers: {goal['p99']:.1f} µs"
        f" ({'meets' if goal['p99'] < 1000 else 'misses'} the 1 ms goal)"
    )


if __name__ == "__main__":
    main()
