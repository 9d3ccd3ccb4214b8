"""Structured JSON logs with correlation ids and stable event codes (docs/daemon.md, *Logs*).

Every record is one JSON object per line::

    {"ts": 1732760000.123, "level": "info", "event": "job.retry", "msg": "...",
     "correlation_id": "...", "job_id": "...", ...}

``event`` is a stable code (see :data:`EVENTS`); operators alert on it, so never rename one.
The correlation id of the request being served comes from a context variable that the HTTP
middleware sets; background work passes the job's own correlation id explicitly.
Secrets are never logged: tokens appear only as :func:`fingerprint`.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import sys
from typing import Any

import orjson

__all__ = ["EVENTS", "JsonFormatter", "correlation_id_var", "fingerprint", "log", "setup_logging"]

LOGGER_NAME = "orchestratord"

correlation_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
"""Correlation id of the request being served (set by the HTTP middleware)."""

EVENTS = {
    "daemon.start": "the daemon is serving",
    "daemon.stop": "the daemon stopped",
    "daemon.recovered": "restart recovery finished (counts of re-queued and failed jobs)",
    "daemon.crash_recovery": "a job found running at start was re-queued or failed",
    "job.admitted": "a job was durably queued (202)",
    "job.rejected": "admission refused a job (code)",
    "job.dropped": "a queued batch job was dropped by drop-oldest-batch",
    "job.dispatched": "a job was sent to a worker",
    "job.retry": "a job was re-queued after a fault before its first token",
    "job.timeout": "a job hit its deadline",
    "job.cancel": "a job was cancelled",
    "job.finished": "a job reached a terminal state",
    "job.client_gone": "the last SSE client left; the reconnect grace period started",
    "worker.cancel_failed": "a worker could not be told to cancel",
    "pool.registered": "a pool registered",
    "pool.unregistered": "a pool unregistered",
    "pool.status": "a pool changed status (online, degraded, offline)",
    "pool.worker_start": "the daemon asked a pool to start a worker",
    "pool.worker_stop": "the daemon asked a pool to stop (evict) a worker",
    "pool.restored": "the stored pool inventory was loaded, offline until heartbeats",
    "scheduler.decision_dropped": "a scheduling decision no longer fit reality",
    "scheduler.error": "a policy call failed or timed out",
    "scheduler.swapped": "the active policy was replaced",
    "scheduler.restored": "the stored active policy was re-applied (restart or takeover)",
    "scheduler.restore_failed": "the stored policy could not be re-applied: config's is used",
    "auth.denied": "a request was refused for a missing or wrong token",
    "http.error": "an unexpected error while serving a request (no stack in the reply)",
}
"""Every stable event code the daemon logs, with its meaning."""


class JsonFormatter(logging.Formatter):
    """Formats records as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON (extra fields passed as ``extra={"fields": {...}}``)."""
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "msg": record.getMessage(),
        }
        cid = getattr(record, "correlation_id", None) or correlation_id_var.get()
        if cid:
            out["correlation_id"] = cid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def setup_logging(level: str = "INFO") -> None:
    """Send the daemon's logs (and uvicorn's) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in (LOGGER_NAME, "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True


def log(
    event: str,
    msg: str,
    *,
    level: int = logging.INFO,
    correlation_id: str | None = None,
    **fields: Any,
) -> None:
    """Log ``msg`` under the stable ``event`` code with extra ``fields``."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.isEnabledFor(level):
        return
    cid = correlation_id or correlation_id_var.get()
    logger.log(level, msg, extra={"event": event, "correlation_id": cid, "fields": fields})


def fingerprint(secret: str) -> str:
    """A short, non-reversible fingerprint of a token, safe to log (``sha256:1a2b3c4d``)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]
