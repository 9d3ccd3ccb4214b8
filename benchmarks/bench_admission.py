"""Benchmark: admission (POST /v2/tasks, durable SQLite) under concurrent clients, against a
trivial endpoint of the same server stack (GET /health: same uvicorn, FastAPI, middleware).

A real ``orchestratord`` process (SQLite in WAL mode, admissions committed with
``synchronous=FULL``, group commit) with an unbounded queue and no workers, so every request
is a full admission: parse, validate, resolve the model, check the context, enqueue, commit,
reply 202. For each concurrency level the same number of async clients hammer each endpoint
for a fixed number of requests; prints throughput, p50 and p99 latency and the ratio
admission / baseline. The load generator shares the 2-core machine with the daemon, so
absolute figures are pessimistic; the same-run ratio is what to compare.

Run: .venv/bin/python benchmarks/bench_admission.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from orchestratord.testing.processes import DaemonProcess

CONFIG = """
[queue]
capacity = -1

[[models]]
model_ref = "m1"
context_length = 8192
"""

BODY = {"model": "m1", "prompt": "Summarise the plot of Hamlet in one line.", "max_tokens": 64}


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    """Send one pre-built HTTP/1.1 request on a kept-alive connection; return the status."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


def _raw(method: str, path: str, port: int) -> bytes:
    body = json.dumps(BODY).encode() if method == "POST" else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def run(url: str, method: str, path: str, clients: int, total: int) -> dict[str, float]:
    """``total`` requests from ``clients`` concurrent keep-alive connections (a minimal
    HTTP/1.1 client, so that the load generator costs as little CPU as possible)."""
    port = int(url.rsplit(":", 1)[1])
    raw = _raw(method, path, port)
    latencies: list[float] = []
    failures = 0
    per_client = total // clients

    async def client() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await _request(reader, writer, _raw("GET", "/health", port))  # warm-up
            await start.wait()
            for _ in range(per_client):
                t0 = time.perf_counter()
                status = await _request(reader, writer, raw)
                latencies.append(time.perf_counter() - t0)
                if status >= 300:
                    failures += 1
        finally:
            writer.close()

    start = asyncio.Event()
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "failures": failures,
    }


def main() -> None:
    quick = "--quick" in sys.argv
    levels = [1, 8, 32] if quick else [1, 4, 16, 64]
    total = 400 if quick else 2000
    with tempfile.TemporaryDirectory() as tmp, DaemonProcess(Path(tmp), CONFIG) as d:
        print(f"orchestratord at {d.url}, SQLite in {d.data_dir}, {total} requests per run")
        header = (
            f"{'clients':>7} | {'admit rps':>9} {'p50 ms':>7} {'p99 ms':>7} | "
            f"{'base rps':>9} {'p50 ms':>7} {'p99 ms':>7} | {'rps ratio':>9} {'p99 ratio':>9}"
        )
        print(header)
        print("-" * len(header))
        best: tuple[float, float] | None = None
        for clients in levels:
            base = asyncio.run(run(d.url, "GET", "/health", clients, total))
            admit = asyncio.run(run(d.url, "POST", "/v2/tasks", clients, total))
            assert admit["failures"] == 0, "admissions failed"
            print(
                f"{clients:>7} | {admit['rps']:>9.0f} {admit['p50_ms']:>7.2f} "
                f"{admit['p99_ms']:>7.2f} | {base['rps']:>9.0f} {base['p50_ms']:>7.2f} "
                f"{base['p99_ms']:>7.2f} | {admit['rps'] / base['rps']:>9.2f} "
                f"{admit['p99_ms'] / base['p99_ms']:>9.2f}"
            )
            if admit["p99_ms"] <= 10 and (best is None or admit["rps"] > best[0]):
                best = (admit["rps"], admit["p99_ms"])
        metrics = httpx.get(d.url + "/metrics").text
        total_s = count = 0.0
        for line in metrics.splitlines():
            if line.startswith("orchestratord_admission_latency_seconds_sum"):
                total_s = float(line.split()[-1])
            if line.startswith("orchestratord_admission_latency_seconds_count"):
                count = float(line.split()[-1])
        if count:
            print(
                f"server-side admission (parse to durable commit), mean: "
                f"{total_s / count * 1000:.2f} ms over {count:.0f} admissions"
            )
        if best is None:
            print("goal p99 <= 10 ms: not met at any measured level")
        else:
            print(f"goal p99 <= 10 ms: met up to {best[0]:.0f} admissions/s (p99 {best[1]:.2f} ms)")


if __name__ == "__main__":
    main()
