"""Running a long-lived async program until SIGINT/SIGTERM (shared by the two CLIs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

__all__ = ["configure_logging", "run_until_signal"]


def configure_logging(level: str) -> None:
    """Log lines to stderr (stdout is reserved for the URL line)."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_until_signal(main: Callable[[], Awaitable[None]]) -> int:
    """Run ``main()`` until it returns or SIGINT/SIGTERM cancels it; exit code 0 on a signal."""

    async def runner() -> None:
        task = asyncio.ensure_future(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
    return 0
