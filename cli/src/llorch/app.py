"""The ``llorch`` command: root options, the error boundary and the command groups.

Every error ends here as one line on stderr (and ``{"error": …}`` on stdout with ``--json``)
and the exit code of :mod:`llorch.exitcodes`; no traceback reaches the user.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from llorch import config_cmd, jobs, pools, scheduler
from llorch.errors import LlorchError
from llorch.exitcodes import ExitCode, exit_codes_help
from llorch.output import Output
from llorch.session import Seams, Session
from llorch.version import __version__

__all__ = ["app", "main"]

_HELP = (
    "Command-line client of the llama-orch orchestrator (orchestratord).\n\n"
    "Commands read `llorch DOMAIN ACTION [ARGS]`. Every command takes --json for "
    "machine-readable output; tables and colour appear only on a terminal (NO_COLOR turns "
    "colour off).\n\n"
    "Settings, lowest to highest precedence: ~/.config/llorch/config.toml (or "
    "$XDG_CONFIG_HOME/llorch/config.toml), then LLORCH_URL / LLORCH_TOKEN / LLORCH_TIMEOUT, "
    "then --url / --token / --timeout. See `llorch config show`."
)


def _is_framework_exit(exc: BaseException) -> bool:
    """typer's and click's own control-flow exceptions (Exit, Abort, usage errors)."""
    if isinstance(exc, typer.Exit | typer.Abort):
        return True
    return type(exc).__module__.split(".")[0] in {"typer", "click"}


class LlorchGroup(TyperGroup):
    """Root group: turns every error into a one-line message and a stable exit code."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command; map llorch errors, Ctrl-C and bugs to exit codes."""
        try:
            return super().invoke(ctx)
        except LlorchError as exc:
            _report(ctx, exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _output(ctx).warn("interrupted")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except Exception as exc:
            if _is_framework_exit(exc) or isinstance(exc, BrokenPipeError):
                raise  # typer prints usage errors and exits quietly on a closed pipe
            bug = LlorchError(f"internal error in llorch: {type(exc).__name__}: {exc}")
            _report(ctx, bug)
            raise typer.Exit(ExitCode.SERVER_ERROR) from None
        finally:
            session = ctx.obj
            if isinstance(session, Session):
                session.close()


def _output(ctx: Any) -> Output:
    session = ctx.obj
    json_mode = isinstance(session, Session) and session.json_mode
    return Output(json_mode=json_mode, env=os.environ)


def _report(ctx: Any, exc: LlorchError) -> None:
    out = _output(ctx)
    if out.json_mode:
        out.json(exc.to_envelope())
    out.error(str(exc))


app = typer.Typer(
    name="llorch",
    cls=LlorchGroup,
    help=_HELP,
    epilog=exit_codes_help(),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(jobs.app, name="jobs")
app.add_typer(pools.app, name="pools")
app.add_typer(scheduler.app, name="scheduler")
app.add_typer(config_cmd.app, name="config")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llorch {__version__}")
        raise typer.Exit(ExitCode.OK)


@app.callback()
def root(  # noqa: PLR0917  # typer passes options positionally
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL[,URL…]",
            help="orchestratord address; several comma-separated for HA daemons (env LLORCH_URL).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", metavar="TOKEN", help="Bearer token (env LLORCH_TOKEN)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", metavar="SECONDS", help="Connect/request timeout (env LLORCH_TIMEOUT)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", metavar="FILE", help="llorch settings file to use instead."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON for any command.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Command-line client of the llama-orch orchestrator."""
    seams = ctx.obj if isinstance(ctx.obj, Seams) else Seams()
    ctx.obj = Session(
        seams=seams,
        flags={"url": url, "token": token, "timeout": timeout},
        config_path=config,
        json_mode=json_out,
    )


def main() -> None:
    """Console-script entry point."""
    app()
