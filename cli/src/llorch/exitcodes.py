"""llorch's exit codes: defined and documented once, here.

Scripts branch on these numbers, so they never change meaning. The root ``--help`` prints
:func:`exit_codes_help`, generated from :class:`ExitCode`; the mapping from the daemon's stable
error codes to exit codes goes through orchestrator_core's one code → HTTP status table
(:func:`orchestrator_core.http_status_for`), so the CLI keeps no table of error codes of its own.
"""

from __future__ import annotations

from enum import IntEnum

from orchestrator_core import ErrorCode, http_status_for

__all__ = ["ExitCode", "exit_code_for_error", "exit_codes_help"]


class ExitCode(IntEnum):
    """Process exit status of every ``llorch`` command."""

    OK = 0
    """Success (a streamed job completed)."""
    JOB_FAILED = 1
    """The job ended failed or cancelled (``jobs submit`` / ``jobs watch``)."""
    USAGE = 2
    """Usage or validation error: bad flags, invalid request, config or policy; nothing sent."""
    UNREACHABLE = 3
    """Cannot reach orchestratord (refused, timed out, or the stream was lost for good)."""
    NOT_FOUND = 4
    """No such job, pool or model."""
    SERVER_ERROR = 5
    """The daemon failed (HTTP 5xx) or answered something llorch cannot read."""
    AUTH = 6
    """Missing or wrong token (HTTP 401/403)."""
    REFUSED = 7
    """The daemon refused for now: queue full, quota, no capacity, conflict (409/429/503)."""
    UNAVAILABLE = 8
    """The feature is not available in this build (e.g. the offline policy tools)."""
    INTERRUPTED = 130
    """Interrupted by Ctrl-C (a job being submitted is cancelled first)."""


_DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.JOB_FAILED: "the job failed or was cancelled",
    ExitCode.USAGE: "usage or validation error (nothing was sent)",
    ExitCode.UNREACHABLE: "cannot reach orchestratord",
    ExitCode.NOT_FOUND: "no such job, pool or model",
    ExitCode.SERVER_ERROR: "server error or unreadable response",
    ExitCode.AUTH: "missing or wrong token",
    ExitCode.REFUSED: "refused for now (queue full, quota, no capacity, conflict)",
    ExitCode.UNAVAILABLE: "feature not available in this build",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_codes_help() -> str:
    """The exit-code table shown at the end of ``llorch --help``."""
    lines = [f"* **{int(code)}** {_DESCRIPTIONS[code]}" for code in ExitCode]
    return "**Exit codes**\n\n" + "\n".join(lines)


def exit_code_for_error(code: str, http_status: int | None = None) -> ExitCode:
    """Exit code for a daemon error ``code`` (an :class:`~orchestrator_core.ErrorCode` name).

    The HTTP status comes from orchestrator_core's table; ``http_status`` is only used for
    codes this build does not know (a newer daemon), so new codes still land in the right class.
    """
    try:
        known = ErrorCode(code)
    except ValueError:
        status = http_status if http_status is not None else 500
    else:
        if known is ErrorCode.CANCELLED:
            return ExitCode.JOB_FAILED
        status = http_status_for(known)
    if status in (401, 403):
        return ExitCode.AUTH
    if status == 404:
        return ExitCode.NOT_FOUND
    if status in (409, 429, 503):
        return ExitCode.REFUSED
    if 400 <= status < 500:
        return ExitCode.USAGE
    return ExitCode.SERVER_ERROR
