"""Benchmark: llama-orch's front doors against the engine itself and against two peers, on the
same two FAKE engines, in one run — what a request costs when it goes through a front door.

Real processes, all on this machine:

* two FAKE OpenAI engines (``benchmarks/frontdoor/fake_engine.py``, raw asyncio + uvloop):
  no model and no delay, every ``/v1/completions`` a 16-token SSE stream in OpenAI's chunk
  format ending ``data: [DONE]``;
* ``orchestratord`` (SQLite, default durability; unbounded queue so that admission never
  refuses) with the two engines registered as static OpenAI-protocol workers
  (``max_concurrency`` 64) by a heartbeating stand-in pool;
* the peers, from their own virtual environment ``benchmarks/.venv-peers`` (pinned in
  ``benchmarks/requirements-peers.txt``; ``--install-peers`` creates it): vllm-router (round
  robin) and the LiteLLM proxy (master key, the two engines as one model, no database).

Rows (``--only`` takes their names): ``direct`` (each client talks to one engine, half to
each), ``v1`` (llama-orch ``POST /v1/completions``, ``stream: true``), ``v2`` (llama-orch
``POST /v2/tasks`` then ``GET /v2/tasks/{id}/events`` until ``end``), ``vllm-router``,
``litellm``. Each is a closed loop: N clients, each on one kept-alive connection, sending its
next request when the previous answer has ended (``frontdoor/loadgen.py``: a bare asyncio
protocol, not httpx). Printed per row: req/s, TTFT p50/p99 (to the first token chunk),
total latency p99 and max, errors, CPU per request of the front door and of the engines,
the load generator's own CPU (% of one core; far below 100 % means it is not what limits a
row) and the ratios to ``direct`` and to ``vllm-router``.

``--soak N`` drives N completed jobs through ``/v1`` (``/v2`` when this build has no
``/v1``) and prints the daemon's RSS after 10,000 and after N jobs (goal: ≤ 10 % growth).

The load generator, the engines and the front door share this machine's cores, so absolute
figures are pessimistic; the same-run ratios are what to compare.

Run: .venv/bin/python benchmarks/bench_frontdoor.py [--quick] [--clients N] [--requests N]
     [--only direct,v1,v2,vllm-router,litellm] [--install-peers] [--soak N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from frontdoor import sampling
from frontdoor.fake_engine import run_loop
from frontdoor.loadgen import (
    LoadResult,
    Target,
    cpu_seconds,
    rss_bytes,
    run_load,
    time_wait_sockets,
)
from frontdoor.procs import (
    LITELLM_KEY,
    MODEL,
    PEERS_VENV,
    FakeEngineProcess,
    OpenAIPool,
    PeerProcess,
    install_peers,
    litellm,
    vllm_router,
)
from orchestratord.testing.processes import DaemonProcess

CONFIG = f"""
[queue]
capacity = -1

[[models]]
model_ref = "{MODEL}"
context_length = 32768
"""

TOKENS = 16
PROMPT = "Summarise the plot of Hamlet in one line."
OPENAI_BODY = {"model": MODEL, "prompt": PROMPT, "max_tokens": TOKENS, "stream": True}
V2_BODY = {"model": MODEL, "prompt": PROMPT, "max_tokens": TOKENS}
PYTHON_DOORS = ("v1", "v2", "litellm")
ROWS = ("direct", "v1", "v2", "vllm-router", "litellm")
LABELS = {
    "direct": "engine direct (fake)",
    "v1": "llama-orch /v1",
    "v2": "llama-orch /v2",
    "vllm-router": "vllm-router 0.1.17",
    "litellm": "LiteLLM proxy",
}
INSTALL_HINT = (
    "run with --install-peers to install it into benchmarks/.venv-peers "
    "(pinned in benchmarks/requirements-peers.txt)"
)


@dataclass
class Row:
    """One front door's figures, or why it has none."""

    name: str
    result: LoadResult | None = None
    note: str = ""
    door_cpu_s: float | None = None
    engine_cpu_s: float = 0.0
    time_wait: int = 0


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` in milliseconds."""
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def measure(
    target: Target,
    args: argparse.Namespace,
    engines: list[FakeEngineProcess],
    door: subprocess.Popen[bytes] | None,
    log: Path | None = None,
) -> Row:
    """One closed-loop run with the CPU of the front door (process ``door``, its log at
    ``log``) and of the engines around it."""
    door_pid = door.pid if door is not None else None
    print(f"  {LABELS[target.name]}: {args.clients} clients x {args.requests} ...", flush=True)
    door0 = cpu_seconds(door_pid) if door_pid else 0.0
    eng0 = sum(cpu_seconds(e.pid) for e in engines)
    ports = {*target.ports, *(e.port for e in engines)}
    tw0 = time_wait_sockets(ports)
    raw = Path(args.profile or ".") / f"{target.name}.pyspy.txt"
    profiling = bool(args.profile and door_pid and target.name in PYTHON_DOORS)
    with contextlib.ExitStack() as stack:
        if profiling and door_pid:
            stack.enter_context(sampling.record(door_pid, raw))
        load = run_load(
            target,
            clients=args.clients,
            per_client=args.requests,
            timeout_s=args.timeout,
            max_s=args.row_seconds or None,
        )
        result = run_in_loop(load)
    row = Row(target.name, result)
    row.door_cpu_s = cpu_seconds(door_pid) - door0 if door_pid else None
    row.engine_cpu_s = sum(cpu_seconds(e.pid) for e in engines) - eng0
    row.time_wait = time_wait_sockets(ports) - tw0
    for sample in result.error_samples:
        print(f"    error: {sample}", flush=True)
    if result.aborted:
        row.note = f"stopped after {result.errors:,} errors, the last 500 in a row"
        print(f"    {row.note}", flush=True)
    if door is not None and door.poll() is not None:
        row.note = f"the front door exited (status {door.returncode}) during the row"
        print(f"    {row.note}", flush=True)
        if log is not None:
            with contextlib.suppress(OSError):
                print(log.read_text(errors="replace")[-3000:], flush=True)
    for e in engines:
        if not e.alive:
            print(f"    the fake engine {e.worker_id} exited during the row!", flush=True)
    if profiling:
        print(f"    py-spy of {LABELS[target.name]} (pid {door_pid}) -> {raw}")
        print("\n".join(sampling.summarise(raw)), flush=True)
    print(
        f"    {result.rps:,.0f} req/s, {result.ok} ok, {result.errors} errors "
        f"in {result.elapsed_s:.1f}s{' (cut by --row-seconds)' if result.cut else ''}; "
        f"slowest {max(result.total, default=0) * 1000:.0f} ms, sent at "
        f"+{result.worst_at_s:.1f}s; TIME_WAIT sockets {row.time_wait:+,}",
        flush=True,
    )
    return row


def run_in_loop(coro: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    """Run ``coro`` on a fresh (uv)loop and return its result."""
    out: list[LoadResult] = []

    async def main() -> None:
        out.append(await coro)

    run_loop(main())
    return out[0]


def v1_available(url: str) -> tuple[bool, str]:
    """Does this build answer ``POST /v1/completions``? (False, why) when it does not."""
    try:
        r = httpx.post(url + "/v1/completions", json={**OPENAI_BODY, "max_tokens": 2}, timeout=30)
    except httpx.HTTPError as exc:
        return False, f"POST /v1/completions failed: {type(exc).__name__}"
    if r.status_code in (404, 405) and "MODEL_NOT_FOUND" not in r.text:
        return False, "not available in this build (POST /v1/completions answers 404)"
    if r.status_code != 200:
        return False, f"POST /v1/completions answered {r.status_code}: {r.text[:200]}"
    return True, ""


@contextlib.contextmanager
def llama_orch(tmp: Path, engines: list[FakeEngineProcess]) -> Iterator[DaemonProcess]:
    """orchestratord with ``engines`` as the static OpenAI workers of one pool."""
    with (
        DaemonProcess(tmp / "orchestratord", CONFIG) as d,
        OpenAIPool(d.url, engines, pool_id="fake-pool", interval_s=2.0),  # type: ignore[arg-type]
    ):
        yield d


def run_rows(args: argparse.Namespace, tmp: Path, engines: list[FakeEngineProcess]) -> list[Row]:
    rows: list[Row] = []
    ports = [e.port for e in engines]
    wanted = [r for r in ROWS if r in args.only]
    if "direct" in wanted:
        rows.append(measure(Target("direct", ports, body=OPENAI_BODY), args, engines, None))
    if "v1" in wanted or "v2" in wanted:
        (tmp / "orchestratord").mkdir()
        with llama_orch(tmp, engines) as d:
            pid = d.proc.pid if d.proc else None
            print(f"orchestratord at {d.url} (pid {pid}), SQLite in {d.data_dir}", flush=True)
            log = d.log_path
            if "v1" in wanted:
                ok, why = v1_available(d.url)
                if ok:
                    target = Target("v1", [d.port], body=OPENAI_BODY)
                    rows.append(measure(target, args, engines, d.proc, log))
                else:
                    print(f"  llama-orch /v1: {why}", flush=True)
                    rows.append(Row("v1", note=why))
            if "v2" in wanted:
                target = Target("v2", [d.port], kind="v2", path="/v2/tasks", body=V2_BODY)
                rows.append(measure(target, args, engines, d.proc, log))
            daemon_log_summary(d)
    for name, factory, headers in (
        ("vllm-router", vllm_router, {}),
        ("litellm", litellm, {"Authorization": f"Bearer {LITELLM_KEY}"}),
    ):
        if name not in wanted:
            continue
        peer: PeerProcess | None = factory(engines, tmp)
        if peer is None:
            note = f"skipped: not installed ({INSTALL_HINT})"
            print(f"  {LABELS[name]}: {note}", flush=True)
            rows.append(Row(name, note=note))
            continue
        print(f"  starting {name} ...", flush=True)
        try:
            with peer:
                target = Target(name, [peer.port], body=OPENAI_BODY, headers=headers)
                rows.append(measure(target, args, engines, peer.proc, peer.log_path))
        except (RuntimeError, TimeoutError) as exc:
            note = f"failed to start: {str(exc)[:200]}"
            print(f"  {LABELS[name]}: {note}", flush=True)
            rows.append(Row(name, note=note))
    return rows


def daemon_log_summary(d: DaemonProcess) -> None:
    """Warnings and errors in the daemon's log, by event code."""
    counts: Counter[str] = Counter()
    with contextlib.suppress(OSError), d.log_path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                counts["(not JSON) " + line.strip()[:80]] += 1
                continue
            if isinstance(rec, dict) and rec.get("level") in ("warning", "error", "critical"):
                counts[f"{rec.get('level')} {rec.get('event')}"] += 1
    if counts:
        top = ", ".join(f"{k}: {v}" for k, v in counts.most_common(6))
        print(f"  orchestratord log: {top}", flush=True)
    else:
        print("  orchestratord log: no warnings or errors", flush=True)


def print_table(rows: list[Row], clients: int) -> None:
    by = {r.name: r.result for r in rows if r.result is not None and r.result.ok}
    direct, router = by.get("direct"), by.get("vllm-router")

    def ratio(r: LoadResult, base: LoadResult | None, what: str) -> str:
        if base is None:
            return "-"
        if what == "rps":
            return f"{r.rps / base.rps:.2f}"
        return f"{pct(r.total, 0.99) / pct(base.total, 0.99):.1f}"

    header = (
        f"{'front door':<21} {'req/s':>7} {'TTFT p50':>8} {'p99':>7} {'total p99':>9} "
        f"{'max':>7} {'errors':>6} | {'door':>6} {'engines':>7} {'client':>6} | "
        f"{'req/s ÷ direct':>14} {'p99 × direct':>12} {'req/s ÷ router':>14} "
        f"{'p99 × router':>12}"
    )
    print()
    print(f"closed loop, {clients} clients, {TOKENS}-token streams from two FAKE engines")
    print("latencies in ms; door / engines: CPU ms per request; client: load generator CPU %")
    print(header)
    print("-" * len(header))
    for row in rows:
        r = row.result
        label = LABELS[row.name]
        if r is None or not r.ok:
            note = row.note or (r.error_samples[0] if r and r.error_samples else "no result")
            errs = f" ({r.errors} errors)" if r else ""
            print(f"{label:<21} {note}{errs}")
            continue
        label += "*" if r.cut else ""
        door = "-" if row.door_cpu_s is None else f"{row.door_cpu_s / r.ok * 1000:.2f}"
        print(
            f"{label:<21} {r.rps:>7,.0f} {pct(r.ttft, 0.5):>8.2f} {pct(r.ttft, 0.99):>7.2f} "
            f"{pct(r.total, 0.99):>9.2f} {max(r.total) * 1000:>7.1f} {r.errors:>6} | "
            f"{door:>6} {row.engine_cpu_s / r.ok * 1000:>7.3f} "
            f"{r.client_cpu_s / r.elapsed_s * 100:>5.0f}% | "
            f"{ratio(r, direct, 'rps'):>14} {ratio(r, direct, 'p99'):>12} "
            f"{ratio(r, router, 'rps'):>14} {ratio(r, router, 'p99'):>12}"
        )
    for row in rows:
        if row.result is not None and row.result.ok and row.note:
            print(f"! {LABELS[row.name]}: {row.note}")
    cut = [r for r in rows if r.result is not None and r.result.cut]
    for row in cut:
        assert row.result is not None
        done = row.result.ok + row.result.errors
        print(f"* {LABELS[row.name]}: cut by --row-seconds after {done:,} requests")
    tw = ", ".join(f"{LABELS[r.name]} {r.time_wait:+,}" for r in rows if r.result is not None)
    print(f"TIME_WAIT sockets to or from the door or the engines, end of row - start: {tw}")
    if direct is not None:
        cpu = direct.client_cpu_s / direct.elapsed_s * 100
        print(
            f"\nthe load generator drove the fake engines directly at {direct.rps:,.0f} req/s "
            f"using {cpu:.0f}% of one core; mean TTFT there {statistics.mean(direct.ttft) * 1000:.2f} ms"
        )


def soak(args: argparse.Namespace, tmp: Path, engines: list[FakeEngineProcess]) -> None:
    """Drive ``args.soak`` jobs through the daemon; its RSS after 10,000 and after all."""
    (tmp / "orchestratord").mkdir()
    with llama_orch(tmp, engines) as d:
        assert d.proc is not None
        pid = d.proc.pid
        ok, why = v1_available(d.url)
        if ok:
            target = Target("v1", [d.port], body=OPENAI_BODY)
        else:
            print(f"llama-orch /v1: {why}; soaking /v2 instead", flush=True)
            target = Target("v2", [d.port], kind="v2", path="/v2/tasks", body=V2_BODY)
        first = min(10_000, args.soak)
        step = max(first, args.soak // 10)
        samples: dict[int, int] = {0: rss_bytes(pid)}
        print(
            f"soak: {args.soak:,} jobs through {LABELS[target.name]}, {args.clients} clients; "
            f"RSS at start {samples[0] / 2**20:.1f} MiB",
            flush=True,
        )

        def on_complete(n: int) -> None:
            if n == first or n % step == 0 or n == args.soak:
                samples[n] = rss_bytes(pid)
                print(f"  {n:>8,} jobs: RSS {samples[n] / 2**20:.1f} MiB", flush=True)

        result = run_in_loop(
            run_load(
                target,
                clients=args.clients,
                total=args.soak,
                timeout_s=args.timeout,
                on_complete=on_complete,
            )
        )
        end_n = max(samples)
        print(
            f"soak: {result.ok:,} ok, {result.errors} errors, {result.rps:,.0f} jobs/s, "
            f"p99 {pct(result.total, 0.99):.1f} ms, max {max(result.total) * 1000:.0f} ms"
        )
        for sample in result.error_samples:
            print(f"  error: {sample}")
        if first in samples and end_n > first:
            growth = samples[end_n] / samples[first] - 1
            print(
                f"daemon RSS: {samples[first] / 2**20:.1f} MiB at {first:,} jobs, "
                f"{samples[end_n] / 2**20:.1f} MiB at {end_n:,} jobs: {growth * 100:+.1f}% "
                f"(goal <= +10%: {'met' if growth <= 0.10 else 'not met'})"
            )
        daemon_log_summary(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 clients x 100 requests")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 32)")
    parser.add_argument("--requests", type=int, help="requests per client (default 2000)")
    parser.add_argument("--only", help=f"comma-separated rows: {','.join(ROWS)}")
    parser.add_argument("--install-peers", action="store_true", help="install the peers first")
    parser.add_argument("--soak", type=int, metavar="N", help="soak mode: N jobs, daemon RSS")
    parser.add_argument(
        "--row-seconds",
        type=float,
        default=600.0,
        help="stop starting requests in a row after this long (0: never; default 600)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy the Python front doors into DIR (slows them)"
    )
    parser.add_argument("--workdir", help="keep configs, logs and the SQLite file here")
    args = parser.parse_args()
    args.clients = args.clients or (8 if args.quick else 32)
    args.requests = args.requests or (100 if args.quick else 2000)
    args.only = set((args.only or ",".join(ROWS)).split(","))
    if unknown := args.only - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose from {','.join(ROWS)}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.install_peers:
        install_peers()
    elif not PEERS_VENV.exists():
        print(f"note: no {PEERS_VENV.name}: peers skipped ({INSTALL_HINT})")
    tw0 = time_wait_sockets()
    with contextlib.ExitStack() as stack:
        if args.workdir:
            tmp = Path(args.workdir)
            tmp.mkdir(parents=True, exist_ok=False)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        engines = [stack.enter_context(_started(FakeEngineProcess(f"fake-{i}"))) for i in (0, 1)]
        print(f"llama-orch {revision()}; two FAKE OpenAI engines (no delay): ", end="")
        print(", ".join(e.url for e in engines), flush=True)
        if args.soak:
            soak(args, tmp, engines)
        else:
            rows = run_rows(args, tmp, engines)
            print_table(rows, args.clients)
    print(f"sockets in TIME_WAIT: {tw0} before, {time_wait_sockets()} after the run")


def revision() -> str:
    """The checked-out commit, and whether the work tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "(revision unknown)"
    return out.stdout.strip()


@contextlib.contextmanager
def _started(engine: FakeEngineProcess) -> Iterator[FakeEngineProcess]:
    try:
        yield engine.start()
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
