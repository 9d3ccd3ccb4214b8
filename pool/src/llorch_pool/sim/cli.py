"""``llorch-sim``: run a simulated engine or a simulated pool (test and benchmark tools).

Usage::

    llorch-sim engine --model m1 --port 0 --tokens-per-s 100 --ttft-ms 20
    llorch-sim pool --orchestrator http://127.0.0.1:8080 --pool-id sim-1 \\
        --gpus 2 --vram-gb 24 --models m1:6,m2:12 --port 0

Both print the URL they listen on as the first line of stdout (so tests can read it), log
to stderr, and stop cleanly on SIGINT/SIGTERM. A simulated engine whose crash fault has
``--crash-scope engine`` exits the process with code 70 when it fires.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from orchestrator_core.errors import RequestInvalid

from llorch_pool import __version__
from llorch_pool._running import configure_logging, run_until_signal
from llorch_pool.protocol import WorkerProtocol
from llorch_pool.serving import bind_socket, serve_app
from llorch_pool.sim.engine import EngineFaults, SimEngineConfig, SimulatedEngine
from llorch_pool.sim.pool import SimPoolFaults, SimulatedPool, parse_models

__all__ = ["CRASH_EXIT_CODE", "build_parser", "main"]

CRASH_EXIT_CODE = 70
"""Exit code of ``llorch-sim engine`` when an engine-scope crash fault fires."""


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine timing")
    g.add_argument("--ttft-ms", type=float, default=50.0, help="time to first token (ms)")
    g.add_argument("--tokens-per-s", type=float, default=50.0, help="per job; 0 = unlimited")
    g.add_argument("--load-time-s", type=float, default=0.0, help="simulated model load time")
    g.add_argument("--concurrency", type=int, default=1, help="jobs served at once")
    g.add_argument("--queue-when-busy", action="store_true", help="wait for a slot, not 503")
    g.add_argument("--eos-probability", type=float, default=0.0, help="per-token chance to end")
    f = p.add_argument_group("engine faults")
    f.add_argument("--crash-after-tokens", type=int, help="drop the stream after N tokens")
    f.add_argument("--crash-scope", choices=["stream", "engine"], default="stream")
    f.add_argument("--hang-after-tokens", type=int, help="stop sending after N tokens")
    f.add_argument("--error-after-tokens", type=int, help="end with error WORKER_FAILED")
    f.add_argument("--refuse", action="store_true", help="answer every job with 503")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``llorch-sim``."""
    parser = argparse.ArgumentParser(
        prog="llorch-sim",
        description="Simulator of LLM engines and pools for llama-orch (a test tool).",
    )
    parser.add_argument("--version", action="version", version=f"llorch-sim {__version__}")
    parser.add_argument("--log-level", default="warning")
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("engine", help="run one simulated engine")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=0, help="0 = a free port")
    e.add_argument("--model", default="sim-model", help="model ref served")
    e.add_argument("--worker-id", default=None, help="reported worker id (default: model@port)")
    e.add_argument("--vram-gb", type=float, default=0.0)
    _add_engine_options(e)

    p = sub.add_parser("pool", help="run one simulated pool")
    p.add_argument(
        "--orchestrator",
        required=True,
        action="append",
        help="orchestratord base URL; repeat or comma-separate for several (HA)",
    )
    p.add_argument("--pool-id", required=True)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--vram-gb", type=float, default=24.0, help="VRAM per simulated GPU")
    p.add_argument("--models", required=True, help="name:vram_gb[:ttft_ms=..:tps=..:load_s=..],...")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port")
    p.add_argument("--advertise-url", default=None, help="endpoint registered (default: URL)")
    p.add_argument("--token", default=os.environ.get("LLORCH_POOL_TOKEN"))
    p.add_argument("--api-token", default=None)
    p.add_argument("--heartbeat-interval", type=float, default=5.0)
    p.add_argument("--max-backoff", type=float, default=10.0)
    p.add_argument("--protocol", choices=[x.value for x in WorkerProtocol], default="llorch")
    _add_engine_options(p)
    return parser


def _engine_config(args: argparse.Namespace, **extra: Any) -> SimEngineConfig:
    values: dict[str, Any] = {
        "ttft_s": args.ttft_ms / 1000.0,
        "tokens_per_s": float(args.tokens_per_s),
        "load_time_s": float(args.load_time_s),
        "max_concurrency": args.concurrency,
        "queue_when_busy": args.queue_when_busy,
        "eos_probability": float(args.eos_probability),
    }
    return SimEngineConfig(**(values | extra))


def _faults(args: argparse.Namespace) -> EngineFaults:
    return EngineFaults(
        crash_after_tokens=args.crash_after_tokens,
        crash_scope=args.crash_scope,
        hang_after_tokens=args.hang_after_tokens,
        error_after_tokens=args.error_after_tokens,
        refuse=args.refuse,
    )


async def _run_engine(args: argparse.Namespace) -> None:
    def crash() -> None:
        os._exit(CRASH_EXIT_CODE)  # a crashed engine: no cleanup, connections dropped

    # Bind first so that the worker id can name the real port.
    probe = bind_socket(args.host, args.port)
    port = probe.getsockname()[1]
    probe.close()
    config = _engine_config(
        args,
        model_ref=args.model,
        worker_id=args.worker_id or f"{args.model}@{port}",
        vram_bytes=round(args.vram_gb * 1e9),
    )
    engine = SimulatedEngine(config, _faults(args), on_crash=crash)
    server = await serve_app(engine.app, host=args.host, port=port, log_level=args.log_level)
    print(server.url, flush=True)
    try:
        await asyncio.shield(server.task)
    finally:
        await server.stop(force=True)


async def _run_pool(args: argparse.Namespace) -> None:
    pool = SimulatedPool(
        pool_id=args.pool_id,
        orchestrator_url=args.orchestrator,
        models=parse_models(args.models),
        gpus=args.gpus,
        vram_bytes_per_gpu=round(args.vram_gb * 1e9),
        engine=_engine_config(args),
        faults=SimPoolFaults(engine_faults=_faults(args)),
        protocol=WorkerProtocol(args.protocol),
        token=args.token,
        api_token=args.api_token,
        listen_host=args.host,
        listen_port=args.port,
        endpoint=args.advertise_url,
        heartbeat_interval_s=args.heartbeat_interval,
        max_backoff_s=args.max_backoff,
    )
    await pool.start()
    print(pool.url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await pool.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llorch-sim``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.command == "engine":
            _engine_config(args)  # validate before binding anything
            _faults(args)
            return run_until_signal(lambda: _run_engine(args))
        parse_models(args.models)
        _engine_config(args)
        return run_until_signal(lambda: _run_pool(args))
    except (ValueError, RequestInvalid) as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"llorch-sim: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
