"""Benchmark: a simulated fleet under a mixed workload, for several scheduling configurations.

Real processes on loopback: one ``orchestratord`` (SQLite store) and 4 simulated pools
(``llorch-sim pool``, the real agent with simulated engines) × 4 GPUs of 24 GB. Twelve
models of 14–22 GB (one worker per GPU) with Zipf-like popularity and a mix that shifts in
three phases (so workers loaded for one phase are evicted for the next), engines with 4 slots, 20 ms to the first token,
100 tokens/s per job and a model load time that grows with the model's size; no worker is
loaded at the start. The same seeded workload — 1000 jobs (``--quick``: 200 jobs on 2 pools
× 2 GPUs), 30 % interactive / 70 % batch, 16–48 tokens each, Poisson arrivals offered a bit
faster than the fleet can serve so that a queue builds — is run once per configuration:

* ``priority`` + ``least-loaded`` (the defaults; the same-run baseline of the ratios),
* ``priority`` + ``round-robin``,
* ``fifo`` + ``least-loaded`` (no priorities: what the priority policy buys interactive jobs).

Printed per configuration: throughput (jobs/s, tokens/s, makespan), queue wait (dispatch −
submission, from the daemon's job records) p50/p99 per priority, time to first token as a
client sees it (from sending the POST to the first SSE token, every 5th job; admission time
under load included) p50/p99 per priority and as the daemon measures it (submission to first
token relayed, all jobs, from its histogram), worker starts and evictions (the daemon's
counters), and the ratios to the baseline configuration measured in the same run. The load
generator shares the 2-core machine with the daemon and the four pools, which is what limits
throughput here: compare the ratios, not the absolute figures.

Run: .venv/bin/python benchmarks/bench_fleet.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from orchestratord.testing.processes import DaemonProcess, PoolProcess, wait_until

# (model, VRAM GB, popularity weight). Every model takes 14-22 GB of a 24 GB GPU: one worker
# per GPU, so the 16 GPUs cannot hold every model and its scaled-out copies at once.
MODELS = [
    ("llama-8b", 16, 20),
    ("mistral-7b", 16, 14),
    ("qwen-14b", 18, 10),
    ("phi-14b", 18, 8),
    ("coder-7b", 14, 8),
    ("gemma-27b", 20, 7),
    ("mixtral", 22, 6),
    ("yi-9b", 16, 6),
    ("deepseek-7b", 14, 6),
    ("falcon-11b", 18, 5),
    ("olmo-7b", 14, 5),
    ("granite-8b", 16, 5),
]
PHASES = 3
"""The workload's model mix shifts over time: in phase k, 80 % of the jobs go to a third of
the models (as a fleet's daytime and nightly mixes differ), so workers loaded for one phase
must be evicted for the next."""
PHASE_SHARE = 0.8
TTFT_MS, TPS, SLOTS = 20, 100, 4
INTERACTIVE_SHARE = 0.3
FOLLOW_EVERY = 5

CONFIGS = [
    ("priority", "least-loaded"),
    ("priority", "round-robin"),
    ("fifo", "least-loaded"),
]

DAEMON_CONFIG = """
[queue]
capacity = -1

[scheduler]
policy = "{policy}"
placement = "{placement}"

[heartbeat]
interval_s = 2.0

[retry]
base_delay_s = 0.2
max_delay_s = 1.0

[timeout]
reconnect_grace_s = 600.0
"""


@dataclass(frozen=True)
class Workload:
    """The jobs to submit: (offset from start in s, model, priority, max_tokens)."""

    jobs: list[tuple[float, str, str, int]]
    pools: int
    gpus: int


def make_workload(n_jobs: int, pools: int, gpus: int, seed: int = 42) -> Workload:
    """A seeded workload offered ~1.3× the fleet's service rate (so a queue builds)."""
    rng = random.Random(seed)
    names = [m for m, _, _ in MODELS]
    weights = [w for _, _, w in MODELS]
    per_phase = len(names) // PHASES
    mean_tokens = 32
    service_s = TTFT_MS / 1000 + mean_tokens / TPS
    # Rough capacity: one worker per GPU once the fleet is warm, SLOTS slots each.
    capacity = pools * gpus * SLOTS / service_s
    rate = min(1.3 * capacity, 120.0)  # bounded: the client and the daemon share 2 cores
    t, jobs = 0.0, []
    for i in range(n_jobs):
        t += rng.expovariate(rate)
        phase = i * PHASES // n_jobs
        if rng.random() < PHASE_SHARE:
            lo = phase * per_phase
            model = rng.choices(names[lo : lo + per_phase], weights[lo : lo + per_phase])[0]
        else:
            model = rng.choices(names, weights)[0]
        priority = "interactive" if rng.random() < INTERACTIVE_SHARE else "batch"
        jobs.append((t, model, priority, rng.randint(16, 48)))
    return Workload(jobs, pools, gpus)


@dataclass
class Run:
    """What one configuration measured."""

    policy: str
    placement: str
    makespan_s: float = 0.0
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    waits: dict[str, list[float]] = field(default_factory=dict)
    ttft: dict[str, list[float]] = field(default_factory=dict)
    starts: float = 0.0
    refused_starts: float = 0.0
    refused_by: dict[str, float] = field(default_factory=dict)
    daemon_ttft: tuple[float, float, float] = (float("nan"),) * 3
    """Submission to first token relayed, all jobs, from the daemon's histogram: mean and
    the bucket-interpolated p50 and p99."""
    evictions: float = 0.0

    @property
    def jobs_per_s(self) -> float:
        """Completed jobs per second of makespan."""
        return self.completed / self.makespan_s if self.makespan_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Relayed tokens per second of makespan."""
        return self.tokens / self.makespan_s if self.makespan_s else 0.0


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` (nearest rank), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def histogram(text: str, name: str) -> tuple[float, float, float]:
    """Mean, p50 and p99 (linear within buckets) of the histogram ``orchestratord_<name>``."""
    buckets: list[tuple[float, float]] = []
    for le, value in re.findall(
        rf'^orchestratord_{re.escape(name)}_bucket\{{le="([^"]+)"\}} (\S+)$', text, re.M
    ):
        buckets.append((float(le), float(value)))
    count = metric(text, f"{name}_count")
    if not count:
        return (float("nan"),) * 3
    mean = metric(text, f"{name}_sum") / count

    def quantile(q: float) -> float:
        rank, prev_le, prev_n = q * count, 0.0, 0.0
        for le, n in sorted(buckets):
            if n >= rank:
                if le == float("inf"):
                    return prev_le
                return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
            prev_le, prev_n = le, n
        return prev_le

    return mean, quantile(0.5), quantile(0.99)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples ``orchestratord_<name>`` matching ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^orchestratord_{re.escape(name)}(?:\{{(.*)\}})? (\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
    return total


async def follow_ttft(client: httpx.AsyncClient, url: str, job_id: str, t_submit: float) -> float:
    """Seconds from submission until the job's first token arrives over SSE (NaN if none)."""
    async with client.stream("GET", f"{url}/v2/tasks/{job_id}/events", timeout=600) as r:
        event = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event == "token":
                    return time.perf_counter() - t_submit
                if event in ("end", "error"):
                    break
    return float("nan")


async def drive(url: str, workload: Workload) -> tuple[float, dict[str, list[float]], list[str]]:
    """Submit the workload on schedule; follow every FOLLOW_EVERY-th job over SSE. Returns
    the submission span, TTFTs per priority and the job ids."""
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends them under us.
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100, keepalive_expiry=2)
    ttft: dict[str, list[float]] = {"interactive": [], "batch": []}
    ids: list[str] = []
    followers: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def submit(i: int, model: str, priority: str, max_tokens: int) -> None:
            body = {
                "model": model,
                "prompt": f"job {i}: tell me about GPUs",
                "max_tokens": max_tokens,
                "priority": priority,
            }
            t_submit = time.perf_counter()
            try:
                r = await client.post(url + "/v2/tasks", json=body)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                r = await client.post(url + "/v2/tasks", json=body)  # a reused, closed socket
            r.raise_for_status()
            job_id = r.json()["job_id"]
            ids.append(job_id)
            if i % FOLLOW_EVERY == 0:
                value = await follow_ttft(client, url, job_id, t_submit)
                ttft[priority].append(value)

        t0 = time.perf_counter()
        for i, (offset, model, priority, max_tokens) in enumerate(workload.jobs):
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            followers.append(asyncio.create_task(submit(i, model, priority, max_tokens)))
        await asyncio.gather(*followers)
        span = time.perf_counter() - t0
    return span, ttft, ids


def collect(url: str, ids: list[str], run: Run) -> None:
    """Read every job's record (paged) once all are finished."""
    wanted = set(ids)
    records: list[dict[str, object]] = []
    cursor: str | None = None
    with httpx.Client(timeout=60) as client:
        while True:
            params = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
            page = client.get(url + "/v2/tasks", params=params).json()
            records.extend(j for j in page["items"] if j["job_id"] in wanted)
            cursor = page["next_cursor"]
            if not cursor:
                break
        text = client.get(url + "/metrics").text
    first_created = min(float(str(j["created_at"])) for j in records)
    last_finished = max(float(str(j["finished_at"] or 0)) for j in records)
    run.makespan_s = last_finished - first_created
    run.waits = {"interactive": [], "batch": []}
    for j in records:
        if j["status"] == "completed":
            run.completed += 1
            run.tokens += int(str(j["tokens_generated"]))
        else:
            run.failed += 1
        if j["started_at"] is not None:
            wait = float(str(j["started_at"])) - float(str(j["created_at"]))
            run.waits[str(j["priority"])].append(wait)
    run.starts = metric(text, "worker_starts_total", outcome="ok")
    run.refused_starts = metric(text, "worker_starts_total") - run.starts
    for code in re.findall(
        r'^orchestratord_worker_starts_total\{outcome="([A-Z_]+)"\}', text, re.M
    ):
        run.refused_by[code] = metric(text, "worker_starts_total", outcome=code)
    run.evictions = metric(text, "worker_evictions_total")
    run.daemon_ttft = histogram(text, "time_to_first_token_seconds")


def run_config(policy: str, placement: str, workload: Workload) -> Run:
    """One configuration on a fresh daemon and fresh pools."""
    run = Run(policy, placement)
    models = ",".join(
        f"{m}:{gb}:load_s={0.1 + gb / 40:.2f}:concurrency={SLOTS}" for m, gb, _ in MODELS
    )
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        workdir = Path(tmp)
        config = DAEMON_CONFIG.format(policy=policy, placement=placement) + "".join(
            f'\n[[models]]\nmodel_ref = "{m}"\nvram_bytes = {gb * 10**9}\n' for m, gb, _ in MODELS
        )
        with DaemonProcess(workdir, config) as daemon:
            pools = []
            try:
                for p in range(workload.pools):
                    args = [
                        "--gpus",
                        str(workload.gpus),
                        "--vram-gb",
                        "24",
                        "--models",
                        models,
                        "--ttft-ms",
                        str(TTFT_MS),
                        "--tokens-per-s",
                        str(TPS),
                        "--heartbeat-interval",
                        "2",
                    ]
                    log = workdir / f"pool-{p}.log"
                    pools.append(PoolProcess.sim(daemon.url, f"pool-{p}", log, *args).start())
                wait_until(
                    lambda: (
                        len(httpx.get(daemon.url + "/v2/pools").json()["pools"]) == workload.pools
                    ),
                    30,
                    "pools to register",
                )
                _span, run.ttft, ids = asyncio.run(drive(daemon.url, workload))

                def finished() -> bool:
                    counts = httpx.get(daemon.url + "/health").json()
                    return bool(counts["queued"] == 0 and counts["running"] == 0)

                wait_until(finished, 300, "every job to finish", interval_s=0.2)
                collect(daemon.url, ids, run)
            finally:
                for pool in pools:
                    pool.stop()
    return run


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds, right-aligned."""
    return f"{seconds * 1000:8.0f}" if seconds == seconds else "     nan"


def report(runs: list[Run]) -> None:
    """Print the table and the same-run ratios to the first configuration."""
    base = runs[0]
    print(
        f"\n{'policy':<9}{'placement':<14}{'jobs':>6}{'fail':>5}{'jobs/s':>8}{'tok/s':>8}"
        f"{'wait p50/p99 ms: inter':>24}{'batch':>18}{'TTFT p50/p99 ms: inter':>25}"
        f"{'batch':>18}{'starts':>8}{'evict':>7}"
    )
    for r in runs:
        wi, wb = r.waits["interactive"], r.waits["batch"]
        ti = [x for x in r.ttft["interactive"] if x == x]
        tb = [x for x in r.ttft["batch"] if x == x]
        print(
            f"{r.policy:<9}{r.placement:<14}{r.completed:>6}{r.failed:>5}{r.jobs_per_s:>8.1f}"
            f"{r.tokens_per_s:>8.0f}"
            f"{fmt_ms(pct(wi, 0.5)):>15}/{fmt_ms(pct(wi, 0.99)).strip():<8}"
            f"{fmt_ms(pct(wb, 0.5)):>9}/{fmt_ms(pct(wb, 0.99)).strip():<8}"
            f"{fmt_ms(pct(ti, 0.5)):>16}/{fmt_ms(pct(ti, 0.99)).strip():<8}"
            f"{fmt_ms(pct(tb, 0.5)):>9}/{fmt_ms(pct(tb, 0.99)).strip():<8}"
            f"{r.starts:>8.0f}{r.evictions:>7.0f}"
        )
        mean, p50, p99 = r.daemon_ttft
        print(
            f"{'':<23}TTFT at the daemon, all jobs: mean {mean * 1000:.0f} ms, "
            f"p50 ~{p50 * 1000:.0f} ms, p99 ~{p99 * 1000:.0f} ms (histogram)"
        )
        if r.refused_starts:
            codes = ", ".join(f"{c} {n:.0f}" for c, n in sorted(r.refused_by.items()))
            print(f"{'':<23}(+{r.refused_starts:.0f} starts refused by pools: {codes})")
    print(f"\nratios to the baseline ({base.policy} + {base.placement}), same run:")
    for r in runs[1:]:

        def ratio(a: float, b: float) -> str:
            return f"{a / b:.2f}x" if b and a == a and b == b else "n/a"

        print(
            f"  {r.policy} + {r.placement}: throughput {ratio(r.jobs_per_s, base.jobs_per_s)}, "
            f"interactive wait p50 {ratio(pct(r.waits['interactive'], 0.5), pct(base.waits['interactive'], 0.5))}"
            f" p99 {ratio(pct(r.waits['interactive'], 0.99), pct(base.waits['interactive'], 0.99))}, "
            f"batch wait p50 {ratio(pct(r.waits['batch'], 0.5), pct(base.waits['batch'], 0.5))}, "
            f"starts {ratio(r.starts, base.starts)}, evictions {ratio(r.evictions, base.evictions)}"
        )
    print(
        json.dumps(
            {
                f"{r.policy}/{r.placement}": {
                    "jobs_per_s": round(r.jobs_per_s, 2),
                    "tokens_per_s": round(r.tokens_per_s, 1),
                    "makespan_s": round(r.makespan_s, 2),
                    "completed": r.completed,
                    "failed": r.failed,
                    "wait_ms": {
                        p: [round(pct(v, 0.5) * 1000), round(pct(v, 0.99) * 1000)]
                        for p, v in r.waits.items()
                    },
                    "ttft_ms": {
                        p: [
                            round(pct([x for x in v if x == x], 0.5) * 1000),
                            round(pct([x for x in v if x == x], 0.99) * 1000),
                        ]
                        for p, v in r.ttft.items()
                        if [x for x in v if x == x]
                    },
                    "mean_ttft_ms_all": round(
                        statistics.fmean([x for v in r.ttft.values() for x in v if x == x] or [0.0])
                        * 1000
                    ),
                    "daemon_ttft_ms_mean_p50_p99": [round(x * 1000) for x in r.daemon_ttft],
                    "worker_starts": r.starts,
                    "worker_starts_refused": r.refused_starts,
                    "evictions": r.evictions,
                }
                for r in runs
            }
        )
    )


def main() -> int:
    """Run every configuration on the same workload and print the figures."""
    quick = "--quick" in sys.argv
    workload = make_workload(200, 2, 2) if quick else make_workload(1000, 4, 4)
    span = workload.jobs[-1][0]
    print(
        f"fleet: {workload.pools} pools x {workload.gpus} GPUs x 24 GB, {len(MODELS)} models, "
        f"{SLOTS} slots/engine, TTFT {TTFT_MS} ms, {TPS} tokens/s per job; "
        f"{len(workload.jobs)} jobs offered over {span:.1f}s "
        f"({len(workload.jobs) / span:.0f}/s, {INTERACTIVE_SHARE:.0%} interactive)"
    )
    runs = []
    for policy, placement in CONFIGS:
        t0 = time.perf_counter()
        runs.append(run_config(policy, placement, workload))
        print(f"  {policy} + {placement}: done in {time.perf_counter() - t0:.1f}s", flush=True)
    report(runs)
    return 0 if all(r.failed == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
