"""A small, pure Server-Sent Events decoder (the WHATWG ``text/event-stream`` format).

Lines go in, :class:`SseEvent` values come out; it does no I/O, so the HTTP client feeds it
whatever lines the network delivers and tests feed it strings. Handles ``event:``, ``data:``
(several lines join with ``\\n``), ``id:`` (kept across events, as the format says),
``retry:``, comments (``:`` lines, used as keep-alives) and a final event without a trailing
blank line (:meth:`SseDecoder.flush`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["SseDecoder", "SseEvent"]


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: its type, raw data text, and its own ``id`` (``None`` when the
    event carried no ``id:`` line; :attr:`SseDecoder.last_event_id` keeps the last one seen)."""

    event: str
    data: str
    id: str | None = None
    retry_ms: int | None = None

    def json(self) -> Any:
        """``data`` decoded as JSON; ``{}`` when empty, the raw text when it is not JSON."""
        if not self.data:
            return {}
        try:
            return json.loads(self.data)
        except ValueError:
            return self.data


class SseDecoder:
    """Incremental decoder: call :meth:`feed` per line, :meth:`flush` at end of stream."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._own_id: str | None = None
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str | None:
        """The last ``id:`` received (what a reconnect sends as ``Last-Event-ID``)."""
        return self._last_id

    def feed(self, line: str) -> SseEvent | None:
        """Take one line (without its line ending); return an event when a blank line ends one."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._last_id = self._own_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def flush(self) -> SseEvent | None:
        """Dispatch an event left pending when the stream ended without a blank line."""
        return self._dispatch()

    def _dispatch(self) -> SseEvent | None:
        event = None
        if self._data or self._event:
            event = SseEvent(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self._own_id,
                retry_ms=self._retry,
            )
        self._event = ""
        self._data = []
        self._own_id = None
        return event
