"""``llorch config``: validate a daemon config offline; show the client's effective settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from orchestrator_core import ConfigInvalid, load_config
from rich.text import Text

from llorch.exitcodes import ExitCode
from llorch.session import JsonOpt, Session

__all__ = ["app"]

app = typer.Typer(
    name="config",
    help="Validate an orchestratord config file; show llorch's own settings.",
    no_args_is_help=True,
)


@app.command()
def validate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="orchestratord TOML config.")],
    with_env: Annotated[
        bool,
        typer.Option(
            "--with-env",
            help="Apply ORCHESTRATORD_* overrides from this environment, as the daemon would.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check an orchestratord config file offline and print every problem with its key path.

    Uses the same validation as the daemon (orchestrator_core). Exits 0 when valid, 2 when not.
    """
    sess = Session.of(ctx)
    out = sess.out(json_out)
    env = dict(os.environ) if with_env else {}
    try:
        config = load_config(file, env=env)
    except ConfigInvalid as exc:
        if out.json_mode:
            out.json({"file": str(file), "valid": False, "problems": exc.problems})
        else:
            for problem in exc.problems:
                out.error(f"{file}: {problem}")
            out.err_console.print(
                Text(f"llorch: {file}: {len(exc.problems)} problem(s)", style="red")
            )
        raise typer.Exit(ExitCode.USAGE) from None
    if out.json_mode:
        config_data = config.to_toml_dict()
        out.json({"file": str(file), "valid": True, "problems": [], "config": config_data})
        return
    models = len(config.models)
    out.line(
        Text(
            f"{file}: valid (mode {config.mode}, listen {config.server.host}:"
            f"{config.server.port}, policy {config.scheduler.policy}, "
            f"{models} model{'s' if models != 1 else ''})",
            style="green",
        )
    )


@app.command()
def show(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show llorch's effective settings (URL, token, timeout) and where each came from.

    Precedence, lowest to highest: default, config file ($XDG_CONFIG_HOME/llorch/config.toml
    or ~/.config/llorch/config.toml), environment (LLORCH_URL, LLORCH_TOKEN, LLORCH_TIMEOUT),
    flags (--url, --token, --timeout). The token is shown only as a fingerprint.
    """
    sess = Session.of(ctx)
    out = sess.out(json_out)
    described = sess.settings().describe()
    if out.json_mode:
        out.json(described)
        return
    rows = [
        [name, "-" if item["value"] is None else str(item["value"]), item["source"]]
        for name, item in described.items()
    ]
    out.table(["setting", "value", "source"], rows)
