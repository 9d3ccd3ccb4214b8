"""The HTTP client of orchestratord — the only module of llorch that does network I/O.

Every request goes through one ``httpx.Client``; its transport is the seam: production uses
httpx's default transport, unit tests pass an ``httpx.MockTransport`` standing in for the
daemon. Transport failures become :class:`~llorch.errors.DaemonUnreachable`, error replies
become :class:`~llorch.errors.ApiError` (the daemon's envelope), unreadable replies become
:class:`~llorch.errors.BadResponse`. Replies are read into orchestrator_core's types, ignoring
fields this build does not know (a newer daemon may add some).

Event streams (:meth:`OrchestratorClient.events`) reconnect when the connection drops before
the job's terminal event, sending ``Last-Event-ID`` so the daemon replays only what was missed;
events the daemon replays anyway (ids not above the last one seen) are skipped.

Several orchestrators (HA daemons on one database: any instance serves every call). The
client uses one URL until it fails, then the next (and stays there). A request is retried on
the next URL when it could not have had any effect, or when repeating it is harmless:

* a connection that failed before the request was sent (``ConnectError``, ``ConnectTimeout``,
  ``PoolTimeout``): every request, ``POST /v2/tasks`` included;
* any other transport failure (a timeout or reset after sending), or a ``502``/``503``/``504``
  answer (a proxy in front of a dead instance, a daemon starting or stopping): ``GET``,
  ``PUT`` and ``DELETE`` only. A ``POST`` is never sent twice — the daemon may have queued
  the job — and the error is shown instead (no duplicate jobs).

An event stream that drops reconnects to the next URL with ``Last-Event-ID``.
"""

from __future__ import annotations

import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from orchestrator_core import (
    ErrorEnvelope,
    JobStatusResponse,
    PoolInfo,
    RequestInvalid,
    TaskSubmitRequest,
    TaskSubmitResponse,
)
from orchestrator_core.api import request_invalid
from orchestrator_core.sse import SseDecoder, SseEvent
from pydantic import BaseModel, ValidationError

from llorch.errors import ApiError, BadResponse, DaemonUnreachable, StreamLost
from llorch.version import __version__

__all__ = ["TERMINAL_EVENTS", "JobPage", "OrchestratorClient"]

TERMINAL_EVENTS = frozenset({"end", "error"})
"""SSE event types that end a job's stream (exactly one of them, exactly once)."""

M = TypeVar("M", bound=BaseModel)

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport failures that happen before any byte of the request left: always retryable."""

_NEXT_URL_STATUSES = frozenset({502, 503, 504})
"""Answers that say "this instance cannot serve now" (retryable for idempotent requests)."""

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``GET /v2/tasks``: the jobs and the cursor of the next page, if any."""

    jobs: list[JobStatusResponse]
    next_cursor: str | None


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    """BaseModel classes inside an annotation such as ``list[GpuInfo]`` or ``JobError | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_model_types(arg))
    return found


def _known_fields(model: type[BaseModel], data: Any) -> Any:
    """``data`` without the keys ``model`` (and its nested models) does not declare."""
    if not isinstance(data, Mapping):
        return data
    out: dict[str, Any] = {}
    for name, value in data.items():
        info = model.model_fields.get(name)
        if info is None:
            continue
        nested = _model_types(info.annotation)
        if nested and isinstance(value, list):
            out[name] = [_known_fields(nested[0], v) for v in value]
        elif nested and isinstance(value, Mapping):
            out[name] = _known_fields(nested[0], value)
        else:
            out[name] = value
    return out


def _read(model: type[M], data: Any, what: str) -> M:
    """Parse a reply into a core type, tolerating fields unknown to this build."""
    if not isinstance(data, Mapping):
        raise BadResponse(f"unexpected answer to {what}: expected a JSON object")
    try:
        return model.model_validate(_known_fields(model, data))
    except ValidationError as exc:  # a type not built on ApiModel
        invalid = request_invalid(exc, model)
        raise BadResponse(f"unexpected answer to {what}: {invalid.message}") from None
    except RequestInvalid as exc:
        raise BadResponse(f"unexpected answer to {what}: {exc.message}") from None


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed by the daemon"
    return text.splitlines()[0][:200]


class _Transient(Exception):
    """A stream request failed in a way worth retrying (the daemon is restarting)."""


def _is_replayed(event_id: str, last: str | None) -> bool:
    """True when ``event_id`` is not after ``last`` (both integers); unknown orders pass."""
    if last is None:
        return False
    try:
        return int(event_id) <= int(last)
    except ValueError:
        return False


class OrchestratorClient:
    """Synchronous client of orchestratord's ``/v2`` API.

    ``transport`` is the unit-test seam (an ``httpx.MockTransport``); ``sleep`` is what waits
    between reconnects of an event stream (tests pass a no-op). Use as a context manager.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_reconnects: int = 5,
        reconnect_delay_s: float = 0.5,
    ) -> None:
        headers = {"User-Agent": f"llorch/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        raw = [base_url] if isinstance(base_url, str) else list(base_url)
        self.urls = [u.strip().rstrip("/") for item in raw for u in item.split(",") if u.strip()]
        if not self.urls:
            raise ValueError("at least one orchestratord URL is required")
        self._index = 0
        self.timeout_s = timeout_s
        self.max_reconnects = max_reconnects
        self.reconnect_delay_s = reconnect_delay_s
        self._sleep = sleep
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The orchestratord URL in use (the first one until it fails)."""
        return self.urls[self._index]

    def _next_url(self) -> None:
        self._index = (self._index + 1) % len(self.urls)

    def _path(self, url: str) -> str:
        """``url`` as a path when it is absolute on one of our URLs (any instance serves it)."""
        parts = urlsplit(url)
        if not parts.scheme:
            return url
        origin = f"{parts.scheme}://{parts.netloc}"
        if any(u == origin or u.startswith(origin + "/") for u in self.urls):
            base_path = urlsplit(self.base_url).path
            path = parts.path[len(base_path) :] if parts.path.startswith(base_path) else parts.path
            return path + (f"?{parts.query}" if parts.query else "")
        return url

    def _url(self, path: str) -> str:
        return path if urlsplit(path).scheme else self.base_url + path

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, moved to the next URL when that is safe (see the module docstring)."""
        retry_any_failure = method.upper() in _IDEMPOTENT
        tried: list[str] = []
        reasons: list[str] = []
        while True:
            url = self.base_url
            tried.append(url)
            more = len(tried) < len(self.urls)
            try:
                response = self._http.request(method, self._url(path), **kwargs)
            except httpx.TransportError as exc:
                reasons.append(_reason(exc))
                if more and (retry_any_failure or isinstance(exc, _NOT_SENT)):
                    self._next_url()
                    continue
                if len(tried) > 1:
                    raise DaemonUnreachable(", ".join(tried), "; ".join(reasons)) from None
                raise DaemonUnreachable(url, reasons[0]) from None
            if more and retry_any_failure and response.status_code in _NEXT_URL_STATUSES:
                response.close()
                reasons.append(f"HTTP {response.status_code}")
                self._next_url()
                continue
            if response.status_code >= 400:
                raise self._api_error(response)
            return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise BadResponse(
                f"unexpected answer to {method} {path}: not JSON (HTTP {response.status_code})"
            ) from None

    @staticmethod
    def _api_error(response: httpx.Response) -> ApiError:
        """The daemon's error envelope as an :class:`ApiError` (a generic one if absent)."""
        status = response.status_code
        retry_after = response.headers.get("Retry-After")
        try:
            envelope = ErrorEnvelope.model_validate(_known_fields(ErrorEnvelope, response.json()))
        except (ValueError, RequestInvalid):
            text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
            message = response.reason_phrase or "error"
            return ApiError(
                f"HTTP_{status}",
                f"{message}{': ' + text if text else ''}",
                http_status=status,
                retry_after=retry_after,
            )
        body = envelope.error
        return ApiError(
            body.code,
            body.message,
            http_status=status,
            details=body.details,
            correlation_id=body.correlation_id or response.headers.get("X-Correlation-Id"),
            retry_after=retry_after,
        )

    # -- jobs ----------------------------------------------------------------------------------

    def submit(self, request: TaskSubmitRequest) -> TaskSubmitResponse:
        """``POST /v2/tasks``: the request must already be validated by the caller."""
        body = request.model_dump(mode="json", exclude_unset=True)
        data = self._json("POST", "/v2/tasks", json=body)
        return _read(TaskSubmitResponse, data, "POST /v2/tasks")

    def job(self, job_id: str) -> JobStatusResponse:
        """``GET /v2/tasks/{id}``."""
        path = f"/v2/tasks/{quote(job_id, safe='')}"
        return _read(JobStatusResponse, self._json("GET", path), f"GET {path}")

    def jobs(
        self,
        *,
        status: str | None = None,
        priority: str | None = None,
        session: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """``GET /v2/tasks`` with filters; one page (follow :attr:`JobPage.next_cursor`)."""
        params = {
            k: v
            for k, v in {
                "status": status,
                "priority": priority,
                "session": session,
                "limit": limit,
                "cursor": cursor,
            }.items()
            if v is not None
        }
        data = self._json("GET", "/v2/tasks", params=params)
        items: Any = data
        next_cursor: Any = None
        if isinstance(data, Mapping):
            items = next((data[k] for k in ("jobs", "tasks", "items") if k in data), None)
            next_cursor = data.get("next_cursor")
        if not isinstance(items, list):
            raise BadResponse("unexpected answer to GET /v2/tasks: no list of jobs")
        jobs = [_read(JobStatusResponse, item, "GET /v2/tasks") for item in items]
        return JobPage(jobs, None if next_cursor in (None, "") else str(next_cursor))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /v2/tasks/{id}``: idempotent; returns the daemon's reply (may be empty)."""
        data = self._json("DELETE", f"/v2/tasks/{quote(job_id, safe='')}")
        return dict(data) if isinstance(data, Mapping) else {}

    def events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        events_url: str | None = None,
    ) -> Iterator[SseEvent]:
        """The job's SSE events until its terminal ``end``/``error`` event.

        Reconnects (with ``Last-Event-ID``) when the stream drops or ends early, backing off
        up to :attr:`max_reconnects` times in a row; then raises
        :class:`~llorch.errors.StreamLost`. A daemon unreachable at the first attempt raises
        :class:`~llorch.errors.DaemonUnreachable` at once.
        """
        url = self._path(events_url or f"/v2/tasks/{quote(job_id, safe='')}/events")
        last = last_event_id
        failures = 0
        unreachable = 0  # URLs that refused the connection before any event came
        received_any = False
        retry_ms: int | None = None
        timeout = httpx.Timeout(self.timeout_s, read=None)  # tokens may be slow to come
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                with self._http.stream(
                    "GET", self._url(url), headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        error = self._api_error(response)
                        # A daemon that restarts answers 502/503 for a moment: retry those
                        # once the stream had started, or on another URL; else it is final.
                        several = len(self.urls) > 1
                        if not (
                            (received_any or several) and error.http_status in _NEXT_URL_STATUSES
                        ):
                            raise error
                        raise _Transient(str(error))
                    decoder = SseDecoder()
                    lines = response.iter_lines()
                    while True:
                        line = next(lines, None)
                        event = decoder.flush() if line is None else decoder.feed(line)
                        if event is not None:
                            retry_ms = event.retry_ms or retry_ms
                            if event.id is not None:
                                if _is_replayed(event.id, last):
                                    continue
                                last = event.id
                            received_any = True
                            failures = 0
                            yield event
                            if event.event in TERMINAL_EVENTS:
                                return
                        if line is None:
                            break
                reason = "the stream ended before the job's terminal event"
            except httpx.TransportError as exc:
                if not received_any and failures == 0 and isinstance(exc, httpx.ConnectError):
                    unreachable += 1
                    if unreachable >= len(self.urls):
                        raise DaemonUnreachable(", ".join(self.urls), _reason(exc)) from None
                    self._next_url()  # try the next instance at once
                    continue
                reason = _reason(exc)
            except _Transient as exc:
                reason = str(exc)
            if len(self.urls) > 1:
                self._next_url()  # resume on the next instance, with Last-Event-ID
            failures += 1
            if failures > self.max_reconnects:
                raise StreamLost(job_id, last, reason)
            base = retry_ms / 1000 if retry_ms else self.reconnect_delay_s
            self._sleep(min(base * 2 ** (failures - 1), 5.0))

    # -- pools ---------------------------------------------------------------------------------

    def pools(self) -> list[PoolInfo]:
        """``GET /v2/pools``."""
        data = self._json("GET", "/v2/pools")
        items = data.get("pools") if isinstance(data, Mapping) else data
        if not isinstance(items, list):
            raise BadResponse("unexpected answer to GET /v2/pools: no list of pools")
        return [_read(PoolInfo, item, "GET /v2/pools") for item in items]

    def pool(self, pool_id: str) -> PoolInfo:
        """``GET /v2/pools/{id}``."""
        path = f"/v2/pools/{quote(pool_id, safe='')}"
        data = self._json("GET", path)
        if isinstance(data, Mapping) and isinstance(data.get("pool"), Mapping):
            data = data["pool"]
        return _read(PoolInfo, data, f"GET {path}")

    # -- scheduler -----------------------------------------------------------------------------

    def scheduler(self) -> dict[str, Any]:
        """``GET /v2/scheduler``: the active policy, as the daemon describes it."""
        data = self._json("GET", "/v2/scheduler")
        if not isinstance(data, Mapping):
            raise BadResponse("unexpected answer to GET /v2/scheduler: expected a JSON object")
        return dict(data)

    def apply_scheduler(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /v2/scheduler``: validate and hot-swap the daemon's policy."""
        data = self._json("PUT", "/v2/scheduler", json=dict(body))
        return dict(data) if isinstance(data, Mapping) else {}
