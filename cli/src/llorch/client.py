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
"""

from __future__ import annotations

import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import quote

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
        base_url: str,
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
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_reconnects = max_reconnects
        self.reconnect_delay_s = reconnect_delay_s
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
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

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise DaemonUnreachable(self.base_url, _reason(exc)) from None
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
        url = events_url or f"/v2/tasks/{quote(job_id, safe='')}/events"
        last = last_event_id
        failures = 0
        received_any = False
        retry_ms: int | None = None
        timeout = httpx.Timeout(self.timeout_s, read=None)  # tokens may be slow to come
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                with self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                        error = self._api_error(response)
                        # A daemon that restarts answers 502/503 for a moment: retry those
                        # once the stream had started; anything else is final.
                        if not (received_any and error.http_status in (502, 503, 504)):
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
                    raise DaemonUnreachable(self.base_url, _reason(exc)) from None
                reason = _reason(exc)
            except _Transient as exc:
                reason = str(exc)
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
