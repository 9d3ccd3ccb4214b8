"""Benchmark: a whole scheduling decision by a Rhai policy vs the built-in policy, same run.

For 1e2 / 1e3 / 1e4 queued jobs and 1e2 single-slot workers (4 pools x 25, 10 models, 5
tenants), the cluster runs in steady state: a running job finishes, the policy decides
(timed: ``state.snapshot(now)`` + ``schedule``), the decision is applied, a new job arrives
(the queue keeps its size). Policies, each on its own copy of the same scenario:

* ``builtin``       — the built-in scheduler (priority order, least-loaded): the baseline;
* ``trivial.rhai``  — ``#{ action: "wait" }``: the floor (ctx build + conversion + checks);
* ``priority.rhai`` — examples/policies/priority.rhai (scores every queued job, plan helpers,
  the built-in decision for worker starts);
* ``rules.yaml``    — examples/policies/rules.yaml compiled to Rhai;
* ``twin.rhai``     — examples/policies/platform_twin.rhai (the built-in policy in Rhai).

The ctx holds at most ``scheduler.snapshot_window`` (256) jobs per order class, so its cost
stops growing with the queue. Printed per case: ctx build (Python side, the snapshot's map
plus free workers and the built-in decision when the policy needs it), time in the engine
(conversion of ctx in, the call, the result out), the whole decision p50 / p99 (snapshot,
ctx, call, validation), and its ratio to the built-in decision's p50 measured in the same
run. Also the cost of the un-windowed ctx at each size, to show why the queue is windowed.
Spec budget: p99 <= 50 ms per decision; goal: p99 <= 5 ms at 1e3 jobs. These 2-core machines
are noisy: compare ratios, not absolute times. Run:
.venv/bin/python benchmarks/bench_rhai_scheduler.py [--quick]
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator_core import OrchestratorConfig
from orchestrator_core.rhai import (
    ContextBuilder,
    PolicyCall,
    RhaiLimits,
    RhaiScheduler,
    compile_rules,
    compile_script,
)
from orchestrator_core.scheduling import (
    ClusterState,
    Decision,
    Dispatch,
    build_scheduler,
    builtin_scheduler_from_config,
    iter_actions,
)
from orchestrator_core.testing import GB, make_gpu, make_job, make_pool, make_worker

QUICK = "--quick" in sys.argv
SIZES = (100, 1_000, 10_000)
WORKERS = 100
POOLS = 4
MODELS = 10
TENANTS = 5
STEP_S = 0.05
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"


def config() -> OrchestratorConfig:
    return OrchestratorConfig.from_mapping(
        {
            "queue": {"capacity": -1, "promote_after_s": 300.0},
            "models": [{"model_ref": f"m{i}", "vram_bytes": 8 * GB} for i in range(MODELS)],
        }
    )


def build(jobs: int, rng: random.Random, now: float) -> ClusterState:
    state = ClusterState.from_config(config())
    per_pool = WORKERS // POOLS
    for p in range(POOLS):
        gpus = [make_gpu(f"g{g}", vram_gb=80, free_gb=0) for g in range(8)]
        workers = [
            make_worker(f"w{p}-{w}", f"m{(p * per_pool + w) % MODELS}", gpus=[f"g{w % 8}"])
            for w in range(per_pool)
        ]
        state.upsert_pool(make_pool(f"pool-{p}", gpus=gpus, workers=workers, heartbeat_at=now))
    for i in range(jobs):
        state.add_job(new_job(f"j{i}", rng, now - rng.uniform(0, 200)))
    return state


def new_job(job_id: str, rng: random.Random, at: float) -> Any:
    return make_job(
        job_id,
        f"m{rng.randrange(MODELS)}",
        priority="interactive" if rng.random() < 0.3 else "batch",
        tenant=f"t{rng.randrange(TENANTS)}",
        queued_at=at,
        seed=rng.randrange(100) if rng.random() < 0.2 else None,
    )


class Scenario:
    """One cluster in steady state driven by one policy."""

    def __init__(self, jobs: int, decide: Callable[[Any], Decision]) -> None:
        self.rng = random.Random(jobs)
        self.now = 1_000_000.0
        self.state = build(jobs, self.rng, self.now)
        self.decide = decide
        self.running: list[str] = []
        self.seq = jobs
        # initial fill: every worker gets a job
        for _ in range(4):
            self.step(timed=False, finish=False)

    def step(self, *, timed: bool = True, finish: bool = True) -> float:
        if finish and self.running:
            job_id = self.running.pop(self.rng.randrange(len(self.running)))
            self.state.job_finished(job_id, now=self.now)
        started = time.perf_counter()
        decision = self.decide(self.state.snapshot(self.now))
        elapsed = time.perf_counter() - started
        self.state.apply(decision, now=self.now)
        for act in iter_actions(decision):
            if isinstance(act, Dispatch):
                self.running.append(act.job_id)
                self.state.add_job(new_job(f"n{self.seq}", self.rng, self.now))
                self.seq += 1
        self.now += STEP_S
        return elapsed if timed else 0.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.3f}"


def policies() -> dict[str, str]:
    return {
        "trivial.rhai": 'fn schedule(ctx) { #{ action: "wait", reason: "trivial" } }',
        "priority.rhai": (EXAMPLES / "priority.rhai").read_text(),
        "rules.yaml": compile_rules((EXAMPLES / "rules.yaml").read_text()),
        "twin.rhai": (EXAMPLES / "platform_twin.rhai").read_text(),
    }


def run_case(jobs: int, steps: int) -> None:
    cfg = config()
    builtin = build_scheduler(cfg)
    base = Scenario(jobs, builtin.schedule)
    times = [base.step() for _ in range(steps)]
    base_p50, base_p99 = statistics.median(times), pct(times, 0.99)
    print(f"{jobs:>6} {'builtin':<14} {'':>8} {'':>8} {ms(base_p50)} {ms(base_p99)} {1.0:>7.2f}")
    for name, source in policies().items():
        calls: list[PolicyCall] = []
        scheduler = RhaiScheduler(
            source,
            name=name,
            policy="rules" if name.endswith(".yaml") else "rhai",
            fallback=builtin_scheduler_from_config(cfg),
            limits=RhaiLimits(max_operations=5_000_000, budget_ms=200),
            on_call=calls.append,
        )
        scenario = Scenario(jobs, scheduler.schedule)
        calls.clear()
        gc.collect()
        times = [scenario.step() for _ in range(steps)]
        ctx = statistics.median(c.ctx_us for c in calls) / 1e6
        engine = statistics.median(c.engine_us for c in calls) / 1e6
        p50, p99 = statistics.median(times), pct(times, 0.99)
        fallbacks = scheduler.stats.fallbacks
        note = f"  ({fallbacks} fallbacks: {scheduler.stats.errors_by_kind})" if fallbacks else ""
        print(
            f"{jobs:>6} {name:<14} {ms(ctx)} {ms(engine)} {ms(p50)} {ms(p99)}"
            f" {p50 / base_p50:>7.2f}{note}"
        )


def unwindowed(jobs: int) -> None:
    state = build(jobs, random.Random(jobs), 1_000_000.0)
    snap = state.snapshot(1_000_000.0)
    noop = compile_script("fn noop() { () }", limits=RhaiLimits(max_map_size=10_000_000))
    row = []
    for window in (None, 10**9):
        builder = ContextBuilder(window)
        builder.build(snap)
        t0 = time.perf_counter()
        ctx = builder.build(snap)
        t1 = time.perf_counter()
        noop.call("noop", this=ctx)
        t2 = time.perf_counter()
        row.append((len(ctx["queue"]), t1 - t0, t2 - t1))
    (wn, wb, wc), (fn, fb, fc) = row
    print(
        f"{jobs:>6} | windowed: {wn:>5} jobs {ms(wb)} build {ms(wc)} into Rhai"
        f" | full: {fn:>6} jobs {ms(fb)} build {ms(fc)} into Rhai"
    )


def main() -> None:
    steps = 40 if QUICK else 300
    print(
        f"bench_rhai_scheduler{' (quick)' if QUICK else ''}: {WORKERS} workers, {steps} decisions"
    )
    print("times in ms; ratio = p50 / built-in p50 of the same size, same run")
    print(f"{'jobs':>6} {'policy':<14} {'ctx':>8} {'engine':>8} {'p50':>8} {'p99':>8} {'ratio':>7}")
    for jobs in SIZES:
        run_case(jobs, steps)
    print("\nctx of one snapshot, windowed (256 per class) vs the whole queue:")
    for jobs in SIZES:
        unwindowed(jobs)


if __name__ == "__main__":
    main()
