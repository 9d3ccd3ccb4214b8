"""``llorch scheduler``: show the daemon's policy, check policies offline, hot-swap one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from llorch import policies
from llorch.errors import UsageProblem
from llorch.exitcodes import ExitCode
from llorch.output import Output
from llorch.render import render_scheduler
from llorch.session import JsonOpt, Session

__all__ = ["app"]

app = typer.Typer(
    name="scheduler",
    help="Show the active scheduling policy; validate, dry-run and apply Rhai/YAML policies.",
    no_args_is_help=True,
)

PolicyFile = Annotated[
    Path, typer.Argument(metavar="FILE", help="A .rhai policy script or a .yaml rule file.")
]


@app.command()
def show(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show the daemon's active scheduling policy."""
    sess = Session.of(ctx)
    out = sess.out(json_out)
    data = sess.client().scheduler()
    if out.json_mode:
        out.json(data)
    else:
        render_scheduler(out, data, sess.seams.clock())


def _print_problems(out: Output, path: Path, report: dict[str, Any]) -> None:
    for problem in report.get("problems", []):
        out.error(f"{path}: {problem}")


@app.command()
def validate(ctx: typer.Context, file: PolicyFile, json_out: JsonOpt = False) -> None:
    """Check a policy offline: compile it, find `schedule`, run it on a sample snapshot.

    Every problem is printed with its line and column. Exits 0 when valid, 2 when not.
    """
    sess = Session.of(ctx)
    out = sess.out(json_out)
    report = policies.validate(file)
    if out.json_mode:
        out.json({"file": str(file), **report})
    elif report.get("valid"):
        out.line(Text(f"{file}: valid {report.get('kind', 'policy')}", style="green"))
    else:
        _print_problems(out, file, report)
    if not report.get("valid"):
        raise typer.Exit(ExitCode.USAGE)


@app.command("dry-run")
def dry_run(
    ctx: typer.Context,
    file: PolicyFile,
    snapshot: Annotated[
        Path,
        typer.Option("--snapshot", metavar="JSON", help="Saved scheduling snapshot (JSON file)."),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Run a policy offline against a saved snapshot and print its decision and log lines."""
    sess = Session.of(ctx)
    out = sess.out(json_out)
    try:
        data = json.loads(snapshot.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageProblem(f"--snapshot {snapshot}: cannot read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"--snapshot {snapshot}: not valid JSON: {exc}") from None
    report = policies.dry_run(file, data)
    if out.json_mode:
        out.json({"file": str(file), **report})
    elif not report.get("valid", True):
        _print_problems(out, file, report)
    else:
        out.fields([("decision", json.dumps(report.get("decision"), sort_keys=True))])
        for entry in report.get("logs", []):
            out.line(f"log: {entry}")
        if report.get("fallback"):
            out.warn(f"the policy failed and the built-in policy decided: {report['fallback']}")
    if not report.get("valid", True):
        raise typer.Exit(ExitCode.USAGE)


@app.command()
def apply(
    ctx: typer.Context,
    file: PolicyFile,
    placement: Annotated[
        str | None,
        typer.Option(help="Placement to use with it: least-loaded, most-vram-free, round-robin."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Hot-swap the daemon's policy with FILE, without a restart.

    The daemon validates the policy before activating it; an invalid one is refused (exit 2)
    and the active policy stays. Needs an operator token outside home mode.
    """
    sess = Session.of(ctx)
    out = sess.out(json_out)
    kind = policies.policy_kind(file)
    source = policies.read_policy(file)
    body: dict[str, Any] = {"policy": kind, ("script" if kind == "rhai" else "rules"): source}
    if placement is not None:
        body["placement"] = placement
    reply = sess.client().apply_scheduler(body)
    if out.json_mode:
        out.json(reply)
        return
    out.line(Text(f"{file}: applied ({kind} policy active)", style="green"))
    if reply:
        reply.pop("script", None)
        reply.pop("rules", None)
        render_scheduler(out, reply, sess.seams.clock())
