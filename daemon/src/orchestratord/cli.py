"""The ``orchestratord`` command: load the configuration, build the app, serve it.

    orchestratord [--config FILE] [--host H] [--port P] [--data-dir D] [--log-level L]

Without ``--config`` the embedded defaults apply (home mode, 127.0.0.1:8080, SQLite in
``~/.local/share/llama-orch``). Flags override the file and ``ORCHESTRATORD_*`` environment
variables. A configuration that does not validate is reported as one problem per line, each
naming its key path, and the command exits with status 2 — never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import uvicorn
from orchestrator_core import ConfigInvalid, OrchestratorConfig, load_config

from orchestratord.app import create_app, sqlite_path
from orchestratord.logs import setup_logging

__all__ = ["EXIT_CONFIG", "build_config", "main"]

EXIT_CONFIG = 2
"""Exit status for an invalid configuration or unusable data directory."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orchestratord",
        description="llama-orch orchestrator daemon: HTTP API, SSE relay, durable queue.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default: built-in)")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.add_argument("--data-dir", metavar="DIR", help="data directory (persistence.data_dir)")
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)",
    )
    return p


def build_config(
    config_path: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    data_dir: str | None = None,
    environ: dict[str, str] | None = None,
) -> OrchestratorConfig:
    """The effective configuration: file (or defaults) < environment < flags.
    Raises :class:`ConfigInvalid` listing every problem."""
    env = dict(os.environ if environ is None else environ)
    # Flags go in as the strongest environment overrides; strings are quoted so TOML reads
    # them as strings whatever they look like.
    if host is not None:
        env["ORCHESTRATORD_SERVER__HOST"] = json.dumps(host)
    if port is not None:
        env["ORCHESTRATORD_SERVER__PORT"] = str(port)
    if data_dir is not None:
        env["ORCHESTRATORD_PERSISTENCE__DATA_DIR"] = json.dumps(data_dir)
    return load_config(config_path, env=env)


def _check_data_dir(config: OrchestratorConfig) -> str | None:
    if config.persistence.backend != "sqlite":
        return None
    path = sqlite_path(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return f"persistence.data_dir: cannot create {path.parent}: {exc.strerror}"
    if not os.access(path.parent, os.W_OK):
        return f"persistence.data_dir: {path.parent} is not writable"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = build_config(args.config, host=args.host, port=args.port, data_dir=args.data_dir)
    except ConfigInvalid as exc:
        where = exc.source or (args.config or "defaults")
        print(f"orchestratord: invalid configuration ({where}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    bad_dir = _check_data_dir(config)
    if bad_dir is not None:
        print(f"orchestratord: {bad_dir}", file=sys.stderr)
        return EXIT_CONFIG

    setup_logging(args.log_level)
    try:
        app = create_app(config)
    except ConfigInvalid as exc:  # e.g. a policy that no scheduler is registered for
        print("orchestratord: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    uvicorn.run(
        app,
        host=config.server.host,
        port=config.server.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
