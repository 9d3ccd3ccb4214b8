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
from llorch.output import Cell, Output
from llorch.render import render_scheduler
from llorch.session import JsonOpt, Session

__all__ = ["app", "describe_decision"]

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


def _print_problems(out: Output, report: dict[str, Any]) -> None:
    for problem in report.get("problems", []):
        out.error(str(problem))
    for warning in report.get("warnings", []):
        out.warn(str(warning))


def _decision(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if value is not None else "-"


def describe_decision(decision: Any) -> list[str]:
    """A scheduler decision (its Rhai map form) as one readable line per action."""
    if not isinstance(decision, dict):
        return [_decision(decision)]
    action = decision.get("action")
    get = decision.get
    if action == "batch":
        lines = [line for a in get("actions", []) for line in describe_decision(a)]
        return lines or ["batch (no actions)"]
    if action == "dispatch":
        where = "/".join(str(x) for x in (get("pool_id"), get("worker_id")) if x)
        return [f"dispatch {get('job_id')} -> {where}"]
    if action == "wait":
        retry = get("retry_after_ms")
        after = f", retry after {retry} ms" if retry is not None else ""
        return [f"wait ({get('reason') or 'no reason'}{after})"]
    if action == "start_worker":
        return [f"start_worker {get('model_ref')} on {get('pool_id')}/{get('gpu_id')}"]
    if action == "evict_worker":
        return [f"evict_worker {get('worker_id')} ({get('reason') or 'no reason'})"]
    if action == "reject":
        return [f"reject {get('job_id')} {get('code')}: {get('message') or ''}".rstrip(": ")]
    return [_decision(decision)]


def _without_explanations(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_explanations(v) for k, v in value.items() if k != "explanation"}
    if isinstance(value, list):
        return [_without_explanations(v) for v in value]
    return value


@app.command()
def validate(ctx: typer.Context, file: PolicyFile, json_out: JsonOpt = False) -> None:
    """Check a policy offline: it compiles, defines `schedule(ctx)`, and decides on a sample
    snapshot without failing.

    Every problem is printed with its line and column. Runs through orchestrator_core, no
    daemon needed. Exits 0 when valid, 2 when not.
    """
    sess = Session.of(ctx)
    out = sess.out(json_out)
    report = policies.validate(file)
    if out.json_mode:
        out.json({"file": str(file), **report})
    else:
        _print_problems(out, report)
        if report.get("valid"):
            functions = ", ".join(report.get("functions", [])) or "-"
            out.line(Text(f"{file}: valid {report.get('kind', 'policy')} policy", style="green"))
            sample = report.get("sample") or {}
            pairs: list[tuple[str, Cell]] = [("functions", functions)]
            for i, line in enumerate(describe_decision(sample.get("decision"))):
                pairs.append(("on the sample" if i == 0 else "", line))
            out.fields(pairs)
        else:
            count = len(report.get("problems", []))
            out.err_console.print(Text(f"llorch: {file}: {count} problem(s)", style="red"))
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
    """Run a policy offline against a saved snapshot; print its decision and log lines.

    Shows the built-in policy's decision on the same snapshot for comparison, and says so
    when the policy failed and the built-in policy decided instead. Exits 2 when the policy
    does not compile or the snapshot is malformed.
    """
    sess = Session.of(ctx)
    out = sess.out(json_out)
    try:
        data = json.loads(snapshot.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageProblem(f"--snapshot {snapshot}: cannot read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"--snapshot {snapshot}: not valid JSON: {exc}") from None
    report = policies.dry_run(file, data, snapshot_name=str(snapshot))
    if out.json_mode:
        out.json({"file": str(file), "snapshot": str(snapshot), **report})
    elif not report.get("valid", True):
        _print_problems(out, report)
    else:
        mine, builtin = report.get("decision"), report.get("builtin_decision")
        pairs: list[tuple[str, Cell]] = []
        for i, line in enumerate(describe_decision(mine)):
            pairs.append(("decision" if i == 0 else "", line))
        if _without_explanations(mine) == _without_explanations(builtin):
            pairs.append(("built-in policy", "would decide the same"))
        else:
            for i, line in enumerate(describe_decision(builtin)):
                pairs.append(("built-in policy" if i == 0 else "", line))
        pairs += [
            ("operations", str(report.get("operations", "-"))),
            ("engine time", f"{report.get('engine_us', 0) / 1000:.2f} ms"),
        ]
        out.fields(pairs)
        for entry in report.get("logs", []):
            out.line(f"log {entry}")
        fallback = report.get("fallback")
        if fallback:
            where = ""
            if isinstance(fallback, dict) and fallback.get("line"):
                where = f" at line {fallback['line']}, column {fallback.get('column')}"
            message = fallback.get("message") if isinstance(fallback, dict) else fallback
            out.warn(f"the policy failed{where} ({message}); the built-in policy decided")
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
