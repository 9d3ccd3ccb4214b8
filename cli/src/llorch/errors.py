"""Every error llorch reports, each with a stable code and its exit code.

Hierarchy::

    LlorchError                   (code, message, details, exit_code)
    ├── UsageProblem              USAGE: bad flags or local input; nothing was sent
    ├── RequestRejectedLocally    USAGE: the core types refused the request (same code and
    │                             message the daemon would give); nothing was sent
    ├── DaemonUnreachable         UNREACHABLE: connection refused, DNS, timeout
    ├── StreamLost                UNREACHABLE: an event stream dropped and did not come back
    ├── ApiError                  the daemon's error envelope; exit code from its stable code
    ├── BadResponse               SERVER_ERROR: an answer llorch cannot read
    └── FeatureUnavailable        UNAVAILABLE: not in this build

Codes of errors raised by the daemon are the daemon's (``JOB_NOT_FOUND``, ``QUEUE_FULL``…);
errors that happen on the client side have client codes (``DAEMON_UNREACHABLE``,
``STREAM_LOST``, ``BAD_RESPONSE``, ``USAGE_ERROR``, ``UNAVAILABLE_IN_BUILD``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator_core import RequestInvalid

from llorch.exitcodes import ExitCode, exit_code_for_error

__all__ = [
    "ApiError",
    "BadResponse",
    "DaemonUnreachable",
    "FeatureUnavailable",
    "LlorchError",
    "RequestRejectedLocally",
    "StreamLost",
    "UsageProblem",
]


class LlorchError(Exception):
    """Base of llorch's errors. ``str(err)`` is the one-line message shown to the user."""

    code: str = "INTERNAL"
    exit_code: ExitCode = ExitCode.SERVER_ERROR

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_envelope(self) -> dict[str, Any]:
        """The error as the daemon's envelope shape, plus the exit code (for ``--json``)."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "exit_code": int(self.exit_code),
            }
        }

    def __str__(self) -> str:
        return self.message


class UsageProblem(LlorchError):
    """Bad flags or unreadable local input (a prompt file, a policy file); nothing was sent."""

    code = "USAGE_ERROR"
    exit_code = ExitCode.USAGE


class RequestRejectedLocally(LlorchError):
    """orchestrator_core refused the request before it was sent: same code and message as the
    daemon's 400 reply would carry."""

    exit_code = ExitCode.USAGE

    def __init__(self, invalid: RequestInvalid) -> None:
        super().__init__(f"{invalid.code}: {invalid.message}", details=invalid.details)
        self.code = str(invalid.code)
        self.bare_message = invalid.message
        self.fields = [e.to_dict() for e in invalid.errors]

    def to_envelope(self) -> dict[str, Any]:
        """The envelope the daemon would have sent (code, message, field details)."""
        env = super().to_envelope()
        env["error"]["message"] = self.bare_message
        return env


class DaemonUnreachable(LlorchError):
    """orchestratord cannot be reached at the configured URL."""

    code = "DAEMON_UNREACHABLE"
    exit_code = ExitCode.UNREACHABLE

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach orchestratord at {url} ({reason}); is it running? "
            "Set the address with --url or LLORCH_URL",
            details={"url": url, "reason": reason},
        )


class StreamLost(LlorchError):
    """A job's event stream dropped and reconnecting with Last-Event-ID kept failing."""

    code = "STREAM_LOST"
    exit_code = ExitCode.UNREACHABLE

    def __init__(self, job_id: str, last_event_id: str | None, reason: str) -> None:
        since = f" --since {last_event_id}" if last_event_id else ""
        super().__init__(
            f"lost the event stream of job {job_id} ({reason}); "
            f"the job may still be running: reattach with `llorch jobs watch {job_id}{since}`",
            details={"job_id": job_id, "last_event_id": last_event_id, "reason": reason},
        )
        self.job_id = job_id
        self.last_event_id = last_event_id


class ApiError(LlorchError):
    """An error reply of the daemon: its stable code, message, details and correlation id."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        http_status: int,
        details: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}", details=details)
        self.code = code
        self.bare_message = message
        self.http_status = http_status
        self.correlation_id = correlation_id
        self.retry_after = retry_after
        self.exit_code = exit_code_for_error(code, http_status)

    def __str__(self) -> str:
        extra = []
        if self.retry_after:
            extra.append(f"retry after {self.retry_after} s")
        if self.correlation_id:
            extra.append(f"correlation id {self.correlation_id}")
        return self.message + (f" ({', '.join(extra)})" if extra else "")

    def to_envelope(self) -> dict[str, Any]:
        """The daemon's envelope as received, plus the exit code."""
        env = super().to_envelope()
        env["error"]["message"] = self.bare_message
        env["error"]["http_status"] = self.http_status
        if self.correlation_id:
            env["error"]["correlation_id"] = self.correlation_id
        return env


class BadResponse(LlorchError):
    """The daemon answered something llorch cannot read (wrong shape, not JSON)."""

    code = "BAD_RESPONSE"
    exit_code = ExitCode.SERVER_ERROR


class FeatureUnavailable(LlorchError):
    """A feature this build of llorch (or of orchestrator_core) does not include."""

    code = "UNAVAILABLE_IN_BUILD"
    exit_code = ExitCode.UNAVAILABLE
