"""Benchmark: cost of crossing the Python/Rhai boundary and of calling a policy.

For a ctx-like dict with 1e2, 1e3 and 1e4 job maps (15 fields each) and 1e2 worker maps:

* conversion: ``call("noop", this=ctx)`` (Python -> Rhai conversion, a trivial call, freeing
  the converted ctx) and ``call("echo", [ctx])`` (the ctx there and back), against same-run
  baselines ``copy.deepcopy(ctx)`` and ``json.dumps(ctx)``;
* call overhead of ``fn schedule(ctx) { #{action: "wait"} }`` with ctx passed as the argument
  versus ``fn schedule_this() { #{action: "wait"} }`` with ctx bound as ``this`` (p50/p99);
* policy idioms on the same ctx: a native method call on the queue (``this.queue.len()``,
  which size-checks the whole queue) and a helper written ``helper(ctx)`` (copies ctx) versus
  method-style ``ctx.helper()`` (by reference).

Also prints the nested totals Rhai's size limits count for each ctx. Prints figures only; no
assertion on wall time. Run: .venv/bin/python benchmarks/bench_rhai_binding.py [--quick]
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from orchestrator_core.rhai.engine import CompiledScript, RhaiLimits, compile_script

QUICK = "--quick" in sys.argv
SIZES = (100, 1_000, 10_000)
N_WORKERS = 100

POLICY = """
fn noop() { () }
fn echo(x) { x }
fn schedule(ctx) { #{ action: "wait" } }
fn schedule_this() { #{ action: "wait" } }
fn queue_len() { this.queue.len() }
fn count_fn(c) { c.queue.len() }
fn count_method() { this.queue.len() }
fn helpers_fn_style(ctx) { let n = 0; for i in 0..10 { n += count_fn(ctx); } n }
fn helpers_method_style() { let n = 0; for i in 0..10 { n += this.count_method(); } n }
"""


def make_ctx(n_jobs: int, n_workers: int = N_WORKERS) -> dict[str, Any]:
    """A ctx shaped like the policy contract: queue, pools with workers and GPUs, catalog..."""
    now = 1_760_000_000_000
    models = ["llama-3-8b-instruct-q4", "qwen2.5-14b-instruct-q5", "mistral-7b-v0.3"]
    queue = [
        {
            "id": f"{i:08x}-7c1e-4b8e-9a41-{i:012x}",
            "tenant_id": f"tenant-{i % 20:02d}",
            "session_id": None if i % 2 else f"{i:08x}-51d0-4c2a-8d1f-{i:012x}",
            "priority": "interactive" if i % 3 == 0 else "batch",
            "model_ref": models[i % 3],
            "prompt_hash": f"{i * 2654435761:064x}",
            "max_tokens": 16 + i % 4000,
            "seed": i if i % 3 == 0 else None,
            "temperature": (i % 100) / 100,
            "created_at": now - i,
            "queued_at": now - i,
            "wait_time_ms": i,
            "retry_count": i % 3,
            "estimated_vram_bytes": (1 + i % 23) * 2**30,
            "status": "queued",
        }
        for i in range(n_jobs)
    ]
    per_pool = 25
    pools = []
    for p in range(max(1, n_workers // per_pool)):
        pools.append(
            {
                "id": f"pool-{p}",
                "endpoint": f"http://pool-{p}.internal:9000",
                "status": "online",
                "last_heartbeat_ms": now - 500,
                "heartbeat_age_ms": 500,
                "gpus": [
                    {
                        "id": g,
                        "name": "RTX 4090",
                        "vram_total_bytes": 24 * 2**30,
                        "vram_allocated_bytes": 8 * 2**30,
                        "vram_free_bytes": 16 * 2**30,
                        "utilization": 0.5,
                    }
                    for g in range(4)
                ],
                "workers": [
                    {
                        "id": f"w-{p}-{w}",
                        "status": ("ready", "busy", "starting")[w % 3],
                        "model_ref": models[w % 3],
                        "gpu_ids": [w % 4],
                        "vram_bytes": 8 * 2**30,
                        "uri": f"http://pool-{p}.internal:{8000 + w}",
                        "current_job_id": None,
                        "last_used_ms": now - w * 1000,
                        "jobs_completed": w * 7,
                    }
                    for w in range(per_pool)
                ],
                "cached_models": models,
            }
        )
    return {
        "queue": queue,
        "pools": pools,
        "catalog": {
            "models": {
                m: {"vram_required_bytes": 8 * 2**30, "context_length": 8192, "family": "llama"}
                for m in models
            },
            "aliases": {"llama": models[0]},
        },
        "tenants": {},
        "metrics": {"queue_depth": {"interactive": n_jobs // 3, "batch": n_jobs - n_jobs // 3}},
        "config": {"mode": "home"},
        "now": now,
    }


def rhai_sizes(value: Any) -> tuple[int, int, int]:
    """(array elements, map entries, string bytes) nested inside ``value``, as Rhai counts."""
    arrays = maps = strings = 0
    if isinstance(value, list | tuple):
        children = list(value)
        arrays += len(children)
    elif isinstance(value, dict):
        children = list(value.values())
        maps += len(children)
    elif isinstance(value, str):
        return 0, 0, len(value.encode())
    else:
        return 0, 0, 0
    for child in children:
        a, m, s = rhai_sizes(child)
        arrays, maps, strings = arrays + a, maps + m, strings + s
    return arrays, maps, strings


def timings(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall times of ``repeat`` calls, in seconds (after one warm-up call)."""
    fn()
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f} ms"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f} us"


def repeats(n_jobs: int) -> int:
    base = {100: 400, 1_000: 100, 10_000: 15}[n_jobs]
    return max(3, base // 5) if QUICK else base


def bench_conversion(script: CompiledScript) -> None:
    print("== conversion of a ctx (median wall time; ratio = this / baseline) ==")
    header = (
        f"{'jobs':>6} {'arrays':>7} {'maps':>8} {'str bytes':>10} | {'deepcopy':>12} "
        f"{'json.dumps':>12} | {'into Rhai':>12} {'x deepcopy':>10} {'x json':>7} | "
        f"{'there+back':>12} {'x deepcopy':>10} {'x json':>7}"
    )
    print(header)
    for n in SIZES:
        ctx = make_ctx(n)
        arrays, maps, strings = rhai_sizes(ctx)
        rep = repeats(n)
        deepcopy = statistics.median(timings(lambda ctx=ctx: copy.deepcopy(ctx), rep))
        dumps = statistics.median(timings(lambda ctx=ctx: json.dumps(ctx), rep))
        into = statistics.median(timings(lambda ctx=ctx: script.call("noop", this=ctx), rep))
        back = statistics.median(timings(lambda ctx=ctx: script.call("echo", [ctx]), rep))
        print(
            f"{n:>6} {arrays:>7} {maps:>8} {strings:>10} | {fmt_ms(deepcopy)} {fmt_ms(dumps)} | "
            f"{fmt_ms(into)} {into / deepcopy:>10.2f} {into / dumps:>7.2f} | "
            f"{fmt_ms(back)} {back / deepcopy:>10.2f} {back / dumps:>7.2f}"
        )
    print()


def bench_call_overhead(script: CompiledScript) -> None:
    print("== call of a trivial schedule() (wall time per call, conversion included) ==")
    rep = 300 if QUICK else 3_000
    empty = timings(lambda: script.call("schedule_this"), rep)
    engine = [float(script.call("schedule_this").elapsed_us) for _ in range(rep)]
    print(
        f"no ctx at all:         p50 {fmt_us(pct(empty, 0.5))}  p99 {fmt_us(pct(empty, 0.99))}"
        f"   (engine alone p50 {statistics.median(engine):.1f} us)"
    )
    print(
        f"{'jobs':>6} | {'arg p50':>12} {'arg p99':>12} {'engine p50':>12} | "
        f"{'this p50':>12} {'this p99':>12} {'engine p50':>12} | {'arg/this':>8} "
        f"{'this/deepcopy':>13}"
    )
    for n in SIZES:
        ctx = make_ctx(n)
        rep = repeats(n)
        as_arg = timings(lambda ctx=ctx: script.call("schedule", [ctx]), rep)
        as_this = timings(lambda ctx=ctx: script.call("schedule_this", this=ctx), rep)
        arg_engine = statistics.median(
            [script.call("schedule", [ctx]).elapsed_us for _ in range(max(3, rep // 4))]
        )
        this_engine = statistics.median(
            [script.call("schedule_this", this=ctx).elapsed_us for _ in range(max(3, rep // 4))]
        )
        deepcopy = statistics.median(timings(lambda ctx=ctx: copy.deepcopy(ctx), rep))
        print(
            f"{n:>6} | {fmt_ms(pct(as_arg, 0.5))} {fmt_ms(pct(as_arg, 0.99))} "
            f"{arg_engine / 1e3:9.3f} ms | {fmt_ms(pct(as_this, 0.5))} "
            f"{fmt_ms(pct(as_this, 0.99))} {this_engine / 1e3:9.3f} ms | "
            f"{pct(as_arg, 0.5) / pct(as_this, 0.5):>8.2f} "
            f"{pct(as_this, 0.5) / deepcopy:>13.2f}"
        )
    print()


def bench_idioms(script: CompiledScript) -> None:
    print("== policy idioms on ctx bound as this (engine time, median) ==")
    print(
        f"{'jobs':>6} | {'this.queue.len()':>16} | {'10x helper(ctx)':>16} "
        f"{'10x ctx.helper()':>17} {'ratio':>7}"
    )
    for n in SIZES:
        ctx = make_ctx(n)
        rep = max(3, repeats(n) // 4)
        qlen = statistics.median(
            [script.call("queue_len", this=ctx).elapsed_us for _ in range(rep)]
        )
        fn_style = statistics.median(
            [script.call("helpers_fn_style", [ctx]).elapsed_us for _ in range(rep)]
        )
        method = statistics.median(
            [script.call("helpers_method_style", this=ctx).elapsed_us for _ in range(rep)]
        )
        print(
            f"{n:>6} | {qlen / 1e3:13.3f} ms | {fn_style / 1e3:13.3f} ms "
            f"{method / 1e3:14.3f} ms {fn_style / max(method, 1):>7.1f}"
        )
    print()


def main() -> None:
    # Generous budget: the benchmark measures cost, it does not test the sandbox.
    script = compile_script(POLICY, limits=RhaiLimits(budget_ms=60_000), name="bench")
    print(f"bench_rhai_binding{' (quick)' if QUICK else ''}: {N_WORKERS} workers per ctx\n")
    bench_conversion(script)
    bench_call_overhead(script)
    bench_idioms(script)


if __name__ == "__main__":
    main()
