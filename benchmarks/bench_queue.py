"""Benchmark: InMemoryJobQueue per-operation cost as the queue grows (issue 2).

For each size N in 1e3, 1e4, 1e5, 1e6 the queue is filled with N jobs (1/3 interactive,
2/3 batch), then timed: enqueue of a new job, dequeue of the head, and cancel of a job in
the middle of the queue (chosen at random each time), each averaged over many operations
while the size stays at ~N. Also the throughput of enqueue+dequeue pairs.

Prints each figure and the ratio of the largest size to the smallest (flat cost: the goal
is <= 2). Run: .venv/bin/python benchmarks/bench_queue.py [--quick]
"""

from __future__ import annotations

import random
import sys
import time

from orchestrator_core import InMemoryJobQueue, Job, JobParams, Priority

PARAMS = JobParams(max_tokens=16)
OPS = 20_000


def make_jobs(prefix: str, n: int, start: int = 0) -> list[Job]:
    return [
        Job(
            job_id=f"{prefix}{i}",
            model_ref="m",
            prompt="p",
            params=PARAMS,
            priority=Priority.INTERACTIVE if i % 3 == 0 else Priority.BATCH,
            prompt_hash="x",
        )
        for i in range(start, start + n)
    ]


def measure(n: int) -> dict[str, float]:
    q = InMemoryJobQueue(capacity=-1, promote_after_s=None)
    base = make_jobs("base-", n)
    for j in base:
        q.enqueue(j)
    extra = make_jobs("new-", OPS)
    rng = random.Random(n)

    t0 = time.perf_counter()
    for j in extra:
        q.enqueue(j)
    enqueue_us = (time.perf_counter() - t0) / OPS * 1e6

    ids = [j.job_id for j in base]
    victims = [ids[rng.randrange(len(ids) // 4, 3 * len(ids) // 4)] for _ in range(OPS)]
    victims = list(dict.fromkeys(victims))
    t0 = time.perf_counter()
    for v in victims:
        q.cancel(v, now=0.0)
    cancel_us = (time.perf_counter() - t0) / len(victims) * 1e6

    t0 = time.perf_counter()
    for _ in range(OPS):
        q.dequeue()
    dequeue_us = (time.perf_counter() - t0) / OPS * 1e6

    pairs = make_jobs("pair-", OPS)
    t0 = time.perf_counter()
    for j in pairs:
        q.enqueue(j)
        q.dequeue()
    pair_s = time.perf_counter() - t0
    present = [j.job_id for j in q.head(len(q))][:: max(1, len(q) // 1000)]
    t0 = time.perf_counter()
    for job_id in present:
        q.position(job_id)
    position_us = (time.perf_counter() - t0) / len(present) * 1e6
    # Baseline in the same run: pop a random key from a plain dict of the same size. It is O(1)
    # too, so its growth is the memory hierarchy's share (caches, TLB), not the algorithm's.
    table = {j.job_id: j for j in base}
    probe = [ids[rng.randrange(len(ids))] for _ in range(OPS)]
    probe = [k for k in dict.fromkeys(probe) if k in table]
    t0 = time.perf_counter()
    for k in probe:
        table.pop(k)
    baseline_us = (time.perf_counter() - t0) / len(probe) * 1e6
    return {
        "baseline_dict_pop_us": baseline_us,
        "enqueue_us": enqueue_us,
        "dequeue_us": dequeue_us,
        "cancel_mid_us": cancel_us,
        "position_us": position_us,
        "pairs_per_s": OPS / pair_s,
    }


def main() -> None:
    sizes = (
        [1_000, 10_000, 100_000] if "--quick" in sys.argv else [1_000, 10_000, 100_000, 1_000_000]
    )
    results = {}
    print(
        f"{'queued':>10} {'enqueue µs':>11} {'dequeue µs':>11} {'cancel-mid µs':>14} "
        f"{'position µs':>12} {'enq+deq pairs/s':>16} {'baseline dict-pop µs':>21}"
    )
    for n in sizes:
        r = measure(n)
        results[n] = r
        print(
            f"{n:>10,} {r['enqueue_us']:>11.2f} {r['dequeue_us']:>11.2f} "
            f"{r['cancel_mid_us']:>14.2f} {r['position_us']:>12.2f} {r['pairs_per_s']:>16,.0f} "
            f"{r['baseline_dict_pop_us']:>21.3f}"
        )
    lo, hi = results[sizes[0]], results[sizes[-1]]
    print(f"\nratio largest/smallest ({sizes[-1]:,} vs {sizes[0]:,} queued; goal <= 2):")
    for key in ("enqueue_us", "dequeue_us", "cancel_mid_us", "position_us", "baseline_dict_pop_us"):
        print(f"  {key:<14} {hi[key] / lo[key]:.2f}")
    print(f"  {'pairs_per_s':<14} {lo['pairs_per_s'] / hi['pairs_per_s']:.2f} (slowdown)")


if __name__ == "__main__":
    main()
