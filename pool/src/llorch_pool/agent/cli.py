"""``llorch-pool``: run the pool agent from a TOML configuration file.

Usage::

    llorch-pool --config pool.toml            # run; first stdout line = the API's URL
    llorch-pool --config pool.toml --check    # validate the file and exit
    llorch-pool --config pool.toml --orchestrator http://a:8080 --orchestrator http://b:8080

Exit codes: 0 clean stop (SIGINT/SIGTERM), 2 bad configuration, 1 failure at start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from orchestrator_core.errors import ConfigInvalid

from llorch_pool import __version__
from llorch_pool._running import configure_logging, run_until_signal
from llorch_pool.agent.config import PoolAgentConfig
from llorch_pool.agent.runtime import PoolAgent

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``llorch-pool``."""
    parser = argparse.ArgumentParser(
        prog="llorch-pool",
        description="llama-orch pool agent: registers this machine's GPUs and engines with "
        "orchestratord and starts/stops engines on request.",
    )
    parser.add_argument("--config", "-c", required=True, help="TOML configuration file")
    parser.add_argument(
        "--orchestrator",
        action="append",
        metavar="URL",
        help="orchestratord URL(s), replacing the file's orchestrator_url; repeat or "
        "comma-separate for several (HA)",
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration only")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument("--version", action="version", version=f"llorch-pool {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llorch-pool``."""
    args = build_parser().parse_args(argv)
    try:
        config = PoolAgentConfig.load(args.config)
        if args.orchestrator:
            data = config.model_dump() | {"orchestrator_url": list(args.orchestrator)}
            config = PoolAgentConfig.from_mapping(data, source="--orchestrator", env={})
    except ConfigInvalid as exc:
        print(f"llorch-pool: invalid configuration: {exc.message}", file=sys.stderr)
        return 2
    if args.check:
        urls = ", ".join(config.orchestrator_urls)
        print(
            f"{args.config}: ok (pool {config.pool_id}, {len(config.models)} model(s),"
            f" orchestrator {urls})"
        )
        return 0
    configure_logging(args.log_level)

    async def run() -> None:
        agent = await PoolAgent.from_config(config)
        await agent.start()
        print(agent.url, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await agent.stop()

    try:
        return run_until_signal(run)
    except (OSError, RuntimeError) as exc:
        print(f"llorch-pool: cannot start: {exc}", file=sys.stderr)
        return 1
