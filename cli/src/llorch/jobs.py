"""``llorch jobs``: submit, status, list, cancel, watch."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from orchestrator_core import (
    ErrorCode,
    FieldError,
    JobStatus,
    Priority,
    RequestInvalid,
    TaskSubmitRequest,
)
from orchestrator_core.sse import SseEvent

from llorch.client import OrchestratorClient
from llorch.errors import LlorchError, RequestRejectedLocally, UsageProblem
from llorch.exitcodes import ExitCode
from llorch.output import Output
from llorch.render import render_job, render_jobs
from llorch.session import JsonOpt, QuietOpt, Session

__all__ = ["DEFAULT_MAX_TOKENS", "app", "follow"]

DEFAULT_MAX_TOKENS = 100
"""``--max-tokens`` when not given (the request type requires a value)."""

app = typer.Typer(
    name="jobs",
    help="Submit inference jobs, follow their token streams, inspect and cancel them.",
    no_args_is_help=True,
)

_PRIORITIES = [p.value for p in Priority]
_STATUSES = [s.value for s in JobStatus]


def _complete(values: list[str]) -> Any:
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def _one_of(name: str, value: str | None, allowed: list[str]) -> None:
    """Reject a filter value the way the core types reject a field (same code and wording)."""
    if value is not None and value not in allowed:
        message = f"{name}: must be one of {', '.join(allowed)}, got {value!r}"
        raise RequestRejectedLocally(
            RequestInvalid([FieldError(name, ErrorCode.INVALID_PARAMETER, message)])
        )


# -- following a job's events -----------------------------------------------------------------


@dataclass
class _Progress:
    """What a follower has seen so far (for the summary and for resuming)."""

    job_id: str
    last_event_id: str | None = None
    tokens: int = 0
    ended_with_newline: bool = True
    first_token_at: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def _summary(progress: _Progress, data: Any) -> str:
    info = dict(progress.metrics)
    if isinstance(data, dict):
        info.update(data)
    tokens = info.get("tokens_generated", info.get("tokens", progress.tokens))
    parts = [f"{tokens} tokens"]
    elapsed = None
    if progress.first_token_at is not None:
        elapsed = time.monotonic() - progress.first_token_at
    rate = info.get("tokens_per_second")
    if isinstance(rate, int | float):
        parts.append(f"{rate:.1f} tok/s")
    elif elapsed is not None and elapsed >= 0.1 and isinstance(tokens, int) and tokens > 1:
        parts.append(f"{tokens / elapsed:.1f} tok/s")
    reason = info.get("finish_reason") or info.get("reason")
    if isinstance(reason, str):
        parts.append(f"finish: {reason}")
    return ", ".join(parts)


def _handle(out: Output, progress: _Progress, event: SseEvent) -> ExitCode | None:
    """Show one event and move the resume point past it; return the exit code once the
    terminal event arrives. :func:`follow` keeps Ctrl-C out of the middle of this."""
    code = _show(out, progress, event)
    if event.id is not None:
        progress.last_event_id = event.id
    return code


def _show(out: Output, progress: _Progress, event: SseEvent) -> ExitCode | None:
    data = event.json()
    if out.json_mode:
        out.json_line({"event": event.event, "id": event.id, "data": data})
    job = progress.job_id
    if event.event == "token":
        text = data.get("t", data.get("text", "")) if isinstance(data, dict) else str(data)
        if not isinstance(text, str):
            text = str(text)
        progress.tokens += 1
        if progress.first_token_at is None:
            progress.first_token_at = time.monotonic()
        if not out.json_mode:
            out.text(text, newline=False)
            if text:
                progress.ended_with_newline = text.endswith("\n")
        return None
    if not progress.ended_with_newline and event.event in ("end", "error") and out.tty:
        out.text("")  # end the generated text's line before the summary on a terminal
        progress.ended_with_newline = True
    if event.event == "queued":
        position = data.get("queue_position") if isinstance(data, dict) else None
        where = f" (position {position})" if position is not None else ""
        out.status(f"job {job} queued{where}")
    elif event.event == "started":
        pool = data.get("pool_id") if isinstance(data, dict) else None
        worker = data.get("worker_id") if isinstance(data, dict) else None
        where = f" on {pool or '?'}/{worker or '?'}" if pool or worker else ""
        out.status(f"job {job} started{where}")
    elif event.event == "metrics":
        if isinstance(data, dict):
            progress.metrics.update(data)
    elif event.event == "end":
        out.status(f"job {job} completed: {_summary(progress, data)}", style="green")
        return ExitCode.OK
    elif event.event == "error":
        code = data.get("code", "INTERNAL") if isinstance(data, dict) else "INTERNAL"
        message = data.get("message", "") if isinstance(data, dict) else str(data)
        if code == ErrorCode.CANCELLED:
            out.status(f"job {job} cancelled", style="magenta")
        elif not out.json_mode:
            out.error(f"job {job} failed: {code}: {message}")
        return ExitCode.JOB_FAILED
    return None


class _InterruptGuard:
    """Defers Ctrl-C while one event is being shown, so that "shown" and "resume point moved
    past it" happen together: a later ``--since`` neither skips nor repeats an event."""

    def __init__(self) -> None:
        self.critical = False
        self.pending = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT handler: raise now, or once the event being shown is done."""
        if self.critical:
            self.pending = True
        else:
            raise KeyboardInterrupt


def follow(
    client: OrchestratorClient,
    out: Output,
    progress: _Progress,
    *,
    events_url: str | None = None,
) -> ExitCode:
    """Print a job's events until its terminal event; the exit code says how it ended."""
    guard = _InterruptGuard()
    installed = True
    previous: Any = signal.default_int_handler
    try:
        previous = signal.signal(signal.SIGINT, guard.handler) or signal.default_int_handler
    except ValueError:  # not the main thread: no signal handling to adjust
        installed = False
    try:
        for event in client.events(
            progress.job_id, last_event_id=progress.last_event_id, events_url=events_url
        ):
            guard.critical = True
            try:
                code = _handle(out, progress, event)
            finally:
                guard.critical = False
            if guard.pending:
                raise KeyboardInterrupt
            if code is not None:
                return code
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)
    return ExitCode.JOB_FAILED  # pragma: no cover - events() only returns after a terminal event


# -- commands ---------------------------------------------------------------------------------


def _read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    if prompt is not None and prompt_file is not None:
        raise UsageProblem("give the prompt once: --prompt or --prompt-file, not both")
    if prompt is None and prompt_file is None:
        raise UsageProblem(
            "no prompt: use --prompt TEXT, --prompt-file FILE, or --prompt - to read stdin"
        )
    if prompt == "-" or prompt_file == "-":
        try:
            return sys.stdin.read()
        except UnicodeDecodeError:
            raise UsageProblem("the prompt on stdin is not UTF-8 text") from None
    if prompt_file is not None:
        try:
            return Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageProblem(f"--prompt-file {prompt_file}: cannot read: {reason}") from None
    assert prompt is not None
    return prompt


@app.command()
def submit(  # noqa: PLR0917  # typer passes options positionally
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference or alias.")],
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="Prompt text; '-' reads it from stdin."),
    ] = None,
    prompt_file: Annotated[
        str | None,
        typer.Option("--prompt-file", "-f", help="Read the prompt from FILE ('-' = stdin)."),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")
    ] = DEFAULT_MAX_TOKENS,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature, 0-2 (daemon default 0.7).")
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass, 0-1.")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Sample from the top K tokens (0 = all).")
    ] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help="Repetition penalty, 0-2 (1 = none).")
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option("--stop", help="Stop sequence (repeatable, at most 4)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Sampling seed, for reproducible output.")
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option(help="interactive (default) or batch.", autocompletion=_complete(_PRIORITIES)),
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", help="Session id (groups jobs for fairness).")
    ] = None,
    job_timeout: Annotated[
        float | None,
        typer.Option("--job-timeout", help="Seconds before the daemon gives up on the job."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Print the job id and return at once.")
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Submit a job and stream its tokens to stdout as they arrive (status goes to stderr).

    The request is validated locally first, with the same rules and messages as the daemon:
    bad input exits with code 2 and nothing is sent. Ctrl-C cancels the job. With --detach
    the job id is printed at once; follow it later with `llorch jobs watch ID`. With --json,
    the submission reply and then every event are printed as one JSON object per line.
    """
    sess = Session.of(ctx)
    out = sess.out(json_out, quiet=quiet)
    text = _read_prompt(prompt, prompt_file)
    fields: dict[str, Any] = {"model": model, "prompt": text, "max_tokens": max_tokens}
    optional = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
        "stop": stop or None,
        "seed": seed,
        "priority": priority,
        "session_id": session,
        "timeout_s": job_timeout,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    try:
        request = TaskSubmitRequest(**fields).validate()
    except RequestInvalid as exc:
        raise RequestRejectedLocally(exc) from None

    client = sess.client()
    accepted = client.submit(request)
    job_id = accepted.job_id
    if detach:
        if out.json_mode:
            out.json(accepted.model_dump(mode="json"))
        else:
            out.text(job_id)
            out.status(
                f"job {job_id} queued (position {accepted.queue_position}); follow it "
                f"with `llorch jobs watch {job_id}`"
            )
        return
    if out.json_mode:
        out.json_line({"event": "submitted", "id": None, "data": accepted.model_dump(mode="json")})
    else:
        out.status(f"job {job_id} submitted (queue position {accepted.queue_position})")
    progress = _Progress(job_id)
    try:
        code = follow(client, out, progress, events_url=accepted.events_url)
    except KeyboardInterrupt:
        _cancel_on_interrupt(client, out, progress)
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    raise typer.Exit(code)


def _cancel_on_interrupt(client: OrchestratorClient, out: Output, progress: _Progress) -> None:
    if not progress.ended_with_newline and out.tty:
        out.text("")
    try:
        client.cancel(progress.job_id)
    except LlorchError as exc:
        out.warn(f"interrupted; could not cancel job {progress.job_id}: {exc}")
        if out.json_mode:
            out.json_line(
                {
                    "event": "interrupted",
                    "id": None,
                    "data": {"job_id": progress.job_id, "cancelled": False},
                }
            )
        return
    out.warn(f"interrupted: cancelled job {progress.job_id}")
    if out.json_mode:
        out.json_line(
            {
                "event": "interrupted",
                "id": None,
                "data": {"job_id": progress.job_id, "cancelled": True},
            }
        )


@app.command()
def watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job to follow.")],
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Resume after this event id (sent as Last-Event-ID); default: replay from "
            "the start.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Reattach to a job's event stream and print its tokens until it ends.

    A job that already finished replays its result. Ctrl-C stops watching (the job keeps
    running) and prints the event id to resume from with --since. Exits 0 when the job
    completed, 1 when it failed or was cancelled.
    """
    sess = Session.of(ctx)
    out = sess.out(json_out, quiet=quiet)
    progress = _Progress(job_id, last_event_id=since)
    try:
        code = follow(sess.client(), out, progress)
    except KeyboardInterrupt:
        if not progress.ended_with_newline and out.tty:
            out.text("")
        resume = f" --since {progress.last_event_id}" if progress.last_event_id else ""
        out.warn(
            f"stopped watching job {job_id} (it keeps running); resume with "
            f"`llorch jobs watch {job_id}{resume}`"
        )
        if out.json_mode:
            out.json_line(
                {"event": "detached", "id": progress.last_event_id, "data": {"job_id": job_id}}
            )
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    raise typer.Exit(code)


@app.command()
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job to show.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one job: status, model, where it runs, tokens, timings, error."""
    sess = Session.of(ctx)
    out = sess.out(json_out)
    job = sess.client().job(job_id)
    if out.json_mode:
        out.json(job.model_dump(mode="json"))
    else:
        render_job(out, job, sess.seams.clock())


@app.command("list")
def list_jobs(  # noqa: PLR0917  # typer passes options positionally
    ctx: typer.Context,
    status_filter: Annotated[
        str | None,
        typer.Option(
            "--status",
            "-s",
            help=f"Only jobs in this state ({', '.join(_STATUSES)}).",
            autocompletion=_complete(_STATUSES),
        ),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option(help="Only interactive or batch jobs.", autocompletion=_complete(_PRIORITIES)),
    ] = None,
    session: Annotated[str | None, typer.Option(help="Only jobs of this session.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Jobs per page.")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="Continue from the cursor a previous page printed.")
    ] = None,
    all_pages: Annotated[
        bool, typer.Option("--all", "-a", help="Follow every page (ignores --cursor).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """List jobs, newest first, filtered by status, priority and session, one page at a time.

    When more jobs match, the cursor of the next page is printed to stderr (and as
    "next_cursor" with --json).
    """
    sess = Session.of(ctx)
    out = sess.out(json_out)
    _one_of("status", status_filter, _STATUSES)
    _one_of("priority", priority, _PRIORITIES)
    client = sess.client()
    jobs = []
    next_cursor = None if all_pages else cursor
    seen: set[str] = set()
    while True:
        page = client.jobs(
            status=status_filter,
            priority=priority,
            session=session,
            limit=limit,
            cursor=next_cursor,
        )
        jobs.extend(page.jobs)
        next_cursor = page.next_cursor
        if not all_pages or next_cursor is None or next_cursor in seen:
            break
        seen.add(next_cursor)
    if all_pages:
        next_cursor = None
    if out.json_mode:
        out.json({"jobs": [j.model_dump(mode="json") for j in jobs], "next_cursor": next_cursor})
        return
    render_jobs(out, jobs, sess.seams.clock())
    if next_cursor:
        out.status(f"more jobs: llorch jobs list --cursor {next_cursor} (or --all)")


@app.command()
def cancel(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Jobs to cancel.")],
    json_out: JsonOpt = False,
) -> None:
    """Cancel jobs. Idempotent: cancelling a finished job is not an error.

    Every id is tried; the exit code is that of the first failure (4 for an unknown job).
    """
    sess = Session.of(ctx)
    out = sess.out(json_out)
    client = sess.client()
    results: list[dict[str, Any]] = []
    first_failure: LlorchError | None = None
    for job_id in job_ids:
        try:
            reply = client.cancel(job_id)
        except LlorchError as exc:
            if exc.exit_code in (ExitCode.UNREACHABLE, ExitCode.AUTH):
                raise  # no point trying the other ids
            first_failure = first_failure or exc
            results.append({"job_id": job_id, **exc.to_envelope()})
            if not out.json_mode:
                out.error(f"job {job_id}: {exc}")
            continue
        state = reply.get("status")
        results.append({"job_id": job_id, **reply, "status": state})
        if out.json_mode:
            continue
        if state == "cancelled" or state is None:
            out.line(f"job {job_id}: cancel{'led' if state else ' requested'}")
        elif state in ("completed", "failed"):
            out.line(f"job {job_id}: already {state}; nothing to cancel")
        else:
            out.line(f"job {job_id}: cancel requested (now {state})")
    if out.json_mode:
        out.json({"results": results})
    if first_failure is not None:
        raise typer.Exit(first_failure.exit_code)
