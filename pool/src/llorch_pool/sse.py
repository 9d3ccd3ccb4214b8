"""Server-sent events: encoding for the engines, and an incremental decoder.

The decoder follows the HTML living standard's parsing rules closely enough for the streams
of this project (``event``, ``data`` over several lines, ``id``, comments, CRLF). It is used by
the tests and by anyone who wants to read a worker stream without another dependency.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["SseDecoder", "SseEvent", "aiter_sse", "encode_data", "encode_event"]


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. ``event`` is ``"message"`` when the stream named none."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """``data`` decoded as JSON."""
        return json.loads(self.data)


def encode_event(event: str, data: Any, *, event_id: str | int | None = None) -> bytes:
    """One SSE frame: ``event: <event>`` and ``data: <compact JSON>``."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


def encode_data(data: Any) -> bytes:
    """An unnamed frame ``data: <payload>`` as OpenAI-compatible servers send it; a ``str``
    payload is sent as it is (``[DONE]``), anything else as compact JSON."""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {body}\n\n".encode()


class SseDecoder:
    """Incremental SSE parser: :meth:`feed` text chunks, get complete events back."""

    def __init__(self) -> None:
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: str) -> list[SseEvent]:
        """Parse ``chunk`` and return the events it completed."""
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            line, rest = cut
            self._buffer = rest
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def _line_end(buffer: str) -> tuple[str, str] | None:
    for i, ch in enumerate(buffer):
        if ch == "\n":
            return buffer[:i], buffer[i + 1 :]
        if ch == "\r":
            if i + 1 == len(buffer):
                return None  # wait: this may be the CR of a CRLF split across chunks
            skip = 2 if buffer[i + 1] == "\n" else 1
            return buffer[:i], buffer[i + skip :]
    return None


async def aiter_sse(chunks: AsyncIterable[str]) -> AsyncIterator[SseEvent]:
    """Events of an async stream of text chunks (e.g. ``httpx.Response.aiter_text()``)."""
    decoder = SseDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
