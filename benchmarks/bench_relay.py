"""Benchmark: the SSE relay — tokens/s relayed and the latency it adds per token, against
reading the engine directly (same engine, same client code, same run).

The engine is a small *stamping* simulated engine served by this script in a child process
(``--engine PORT``): it speaks the native worker protocol and puts its ``time.monotonic()``
at emission into each token's text. ``CLOCK_MONOTONIC`` is system-wide on Linux, so a client
in another process computes each token's delivery latency as ``now - stamp``:

* direct — the client POSTs ``/execute`` to the engine and reads its SSE;
* relayed — the client submits to a real ``orchestratord`` (SQLite store) that dispatches to
  the same engine, and reads ``/v2/tasks/{id}/events``.

Added latency per token = relayed − direct (p50 and p99). Throughput: the engine emits as
fast as it can; tokens/s seen by the client, direct vs relayed.

Run: .venv/bin/python benchmarks/bench_relay.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from orchestratord.testing.processes import DaemonProcess, HeartbeatingPool, free_port, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

STREAMS = 8

CONFIG = """
[heartbeat]
interval_s = 1.0

[[models]]
model_ref = "bench"
context_length = 1000000
"""


# -- the stamping engine (child process) -------------------------------------------------------


def serve_engine(port: int) -> None:
    """A native-protocol engine whose token text is its emission time (monotonic)."""

    async def execute(request: Request) -> StreamingResponse:
        body = await request.json()
        n, delay = int(body["max_tokens"]), float(body.get("temperature", 0.0)) / 100.0

        async def stream() -> AsyncIterator[bytes]:
            yield f"event: started\ndata: {json.dumps({'job_id': body['job_id']})}\n\n".encode()
            for i in range(n):
                if delay:
                    await asyncio.sleep(delay)
                data = json.dumps({"i": i, "t": repr(time.monotonic())})
                yield f"event: token\ndata: {data}\n\n".encode()
            end = json.dumps({"tokens": n, "finish_reason": "length"})
            yield f"event: end\ndata: {end}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def cancel(request: Request) -> JSONResponse:
        return JSONResponse({}, status_code=202)

    app = Starlette(
        routes=[
            Route("/execute", execute, methods=["POST"]),
            Route("/cancel", cancel, methods=["POST"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- the client ---------------------------------------------------------------------------------


async def read_tokens(resp: httpx.Response) -> tuple[list[float], int, float]:
    """(per-token latencies, token count, seconds from first to last token)."""
    lat: list[float] = []
    first = last = 0.0
    event = ""
    async for line in resp.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "token":
            now = time.monotonic()
            lat.append(now - float(json.loads(line[6:])["t"]))
            first = first or now
            last = now
        elif line.startswith("data: ") and event in ("end", "error"):
            break
    return lat, len(lat), last - first


async def direct(engine: str, tokens: int, pace: float) -> tuple[list[float], int, float]:
    body = {
        "job_id": f"d-{time.time_ns()}",
        "prompt": "p",
        "max_tokens": tokens,
        "temperature": pace,
    }
    async with (
        httpx.AsyncClient(timeout=120) as c,
        c.stream("POST", engine + "/execute", json=body) as r,
    ):
        return await read_tokens(r)


async def relayed(url: str, tokens: int, pace: float) -> tuple[list[float], int, float]:
    body = {"model": "bench", "prompt": "p", "max_tokens": tokens, "temperature": pace}
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        r = await c.post("/v2/tasks", json=body)
        job_id = r.json()["job_id"]
        async with c.stream("GET", f"/v2/tasks/{job_id}/events") as s:
            return await read_tokens(s)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--engine":
        serve_engine(int(sys.argv[2]))
        return
    quick = "--quick" in sys.argv
    port = free_port()
    engine_url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "--engine", str(port)])
    try:
        wait_until(
            lambda: httpx.post(engine_url + "/cancel", json={}).status_code == 202,
            20,
            "the stamping engine",
        )
        with tempfile.TemporaryDirectory() as tmp, DaemonProcess(Path(tmp), CONFIG) as d:
            stubs = [_Stub(engine_url, f"stamp-{i}") for i in range(STREAMS)]
            with HeartbeatingPool(d.url, stubs, interval_s=0.5):  # type: ignore[arg-type]
                # 1) latency per token at a realistic pace (1 token / 5 ms)
                n_lat = 200 if quick else 1000
                asyncio.run(direct(engine_url, 20, 0.5))  # warm-up
                asyncio.run(relayed(d.url, 20, 0.5))
                dl, _, _ = asyncio.run(direct(engine_url, n_lat, 0.5))
                rl, _, _ = asyncio.run(relayed(d.url, n_lat, 0.5))
                # 2) throughput: as fast as the engine can emit
                n_tp = 2000 if quick else 10000
                _, dn, ds = asyncio.run(direct(engine_url, n_tp, 0.0))
                _, rn, rs = asyncio.run(relayed(d.url, n_tp, 0.0))
                # 3) aggregate: several streams at once (group commit across streams)
                n_agg = n_tp // STREAMS
                t0 = time.perf_counter()
                asyncio.run(_many(direct, engine_url, n_agg))
                d_agg = n_agg * STREAMS / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                asyncio.run(_many(relayed, d.url, n_agg))
                r_agg = n_agg * STREAMS / (time.perf_counter() - t0)
        print(f"per-token delivery latency ({n_lat} tokens at 200 tokens/s):")
        print(f"  direct   p50 {pct(dl, 0.5):.3f} ms  p99 {pct(dl, 0.99):.3f} ms")
        print(f"  relayed  p50 {pct(rl, 0.5):.3f} ms  p99 {pct(rl, 0.99):.3f} ms")
        added50 = pct(rl, 0.5) - pct(dl, 0.5)
        added99 = pct(rl, 0.99) - pct(dl, 0.99)
        print(
            f"  added by the relay: p50 {added50:.3f} ms, p99 {added99:.3f} ms "
            f"(goal < 1 ms at p50: {'met' if added50 < 1 else 'not met'})"
        )
        d_tps, r_tps = dn / ds, rn / rs
        print(f"throughput ({n_tp} tokens, engine unthrottled):")
        print(
            f"  direct {d_tps:,.0f} tokens/s, relayed {r_tps:,.0f} tokens/s, "
            f"ratio {r_tps / d_tps:.2f}"
        )
        print(
            f"  mean direct latency {statistics.mean(dl) * 1000:.3f} ms vs relayed "
            f"{statistics.mean(rl) * 1000:.3f} ms"
        )
        print(
            f"aggregate over {STREAMS} concurrent streams: direct {d_agg:,.0f} tokens/s, "
            f"relayed {r_agg:,.0f} tokens/s, ratio {r_agg / d_agg:.2f}"
        )
    finally:
        proc.terminate()
        proc.wait(10)


async def _many(fn: Any, url: str, tokens: int) -> None:
    await asyncio.gather(*(fn(url, tokens, 0.0) for _ in range(STREAMS)))


class _Stub:
    """Looks like an EngineProcess to HeartbeatingPool (one worker id per stream)."""

    def __init__(self, url: str, worker_id: str) -> None:
        self.url, self.model, self.worker_id, self.alive = url, "bench", worker_id, True


if __name__ == "__main__":
    main()
