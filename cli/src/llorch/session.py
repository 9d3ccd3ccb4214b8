"""Per-invocation state shared by the commands: settings, the HTTP client, the output mode.

:class:`Seams` is the unit-test seam of the whole CLI: tests pass
``obj=Seams(transport=httpx.MockTransport(handler), sleep=lambda s: None)`` to
``CliRunner.invoke`` and every command then talks to that in-process stand-in for the daemon.
A real run uses httpx's network transport and real sleeps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from llorch.client import OrchestratorClient
from llorch.output import Output
from llorch.settings import ClientSettings, resolve_settings

__all__ = ["JsonOpt", "QuietOpt", "Seams", "Session"]

JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Machine-readable JSON on stdout (no colour, no tables)."),
]
"""The ``--json`` flag every command takes."""

QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No status lines on stderr (errors still shown).")
]
"""The ``--quiet`` flag of the streaming commands."""


@dataclass
class Seams:
    """Replaceable I/O for tests: the HTTP transport, the reconnect sleep and the clock."""

    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time


@dataclass
class Session:
    """What one ``llorch`` invocation knows: global flags, seams and (lazily) the client."""

    seams: Seams
    flags: dict[str, Any]
    config_path: Path | None = None
    json_mode: bool = False
    _settings: ClientSettings | None = field(default=None, repr=False)
    _client: OrchestratorClient | None = field(default=None, repr=False)

    @staticmethod
    def of(ctx: typer.Context) -> Session:
        """The session stored on the root context by the ``llorch`` callback."""
        obj = ctx.find_root().obj
        if not isinstance(obj, Session):  # pragma: no cover - the root callback always sets it
            raise RuntimeError("llorch session missing")
        return obj

    def settings(self) -> ClientSettings:
        """The effective client settings (resolved on first use, so offline commands work
        even when the client config is broken)."""
        if self._settings is None:
            self._settings = resolve_settings(self.flags, os.environ, self.config_path)
        return self._settings

    def client(self) -> OrchestratorClient:
        """The HTTP client for the configured daemon (closed when the command ends)."""
        if self._client is None:
            s = self.settings()
            self._client = OrchestratorClient(
                s.urls,
                token=s.token_value,
                timeout_s=s.timeout_s,
                transport=self.seams.transport,
                sleep=self.seams.sleep,
            )
        return self._client

    def out(self, json_flag: bool = False, *, quiet: bool = False) -> Output:
        """The output for this command; ``--json`` given here or globally selects JSON."""
        self.json_mode = self.json_mode or json_flag
        return Output(json_mode=self.json_mode, env=os.environ, quiet=quiet)

    def close(self) -> None:
        """Release the HTTP client."""
        if self._client is not None:
            self._client.close()
            self._client = None
