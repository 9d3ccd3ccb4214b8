"""Server-Sent Events framing (the WHATWG ``text/event-stream`` format): encode and decode.

Pure text in, text out — no I/O — so the daemon (relaying workers and serving clients), the
CLI (reading the daemon) and the pool's simulated engines share one codec. The decoder takes
either one line at a time (:meth:`SseDecoder.feed`, e.g. from ``httpx``'s ``aiter_lines``) or
raw text chunks (:meth:`SseDecoder.feed_text`, which also copes with a CRLF split across two
chunks). It handles ``event:``, ``data:`` over several lines (joined with ``\\n``), ``id:``
(remembered for reconnects as :attr:`SseDecoder.last_event_id`), ``retry:``, comments
(``:`` lines, used as keep-alives) and a last event without its blank line
(:meth:`SseDecoder.flush`). As the format says, a block without any ``data:`` line dispatches
nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["SseDecoder", "SseEvent", "aiter_sse", "encode_data", "encode_event"]


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: its type (``"message"`` when the stream named none), its raw data
    text, its own ``id`` (``None`` when it carried no ``id:`` line) and ``retry:`` if sent."""

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


def encode_event(event: str, data: Any, *, event_id: str | int | None = None) -> bytes:
    """One frame: ``id:`` (if given), ``event:`` and ``data:`` with ``data`` as compact JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


def encode_data(data: Any) -> bytes:
    """An unnamed frame ``data: <payload>`` as OpenAI-compatible servers send it; a ``str``
    payload is sent as it is (``[DONE]``), anything else as compact JSON."""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {body}\n\n".encode()


class SseDecoder:
    """Incremental decoder: :meth:`feed` lines or :meth:`feed_text` chunks, :meth:`flush` at
    the end of the stream."""

    def __init__(self) -> None:
        self._buffer = ""
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
        """Take one line (its line ending optional); return an event when a blank line ends
        one."""
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

    def feed_text(self, chunk: str) -> list[SseEvent]:
        """Take a chunk of raw stream text; return the events it completed."""
        self._buffer += chunk
        events: list[SseEvent] = []
        while (cut := _line_end(self._buffer)) is not None:
            line, self._buffer = cut
            event = self.feed(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> SseEvent | None:
        """Dispatch an event left pending when the stream ended without a blank line."""
        if self._buffer:
            pending, self._buffer = self._buffer, ""
            self.feed(pending)
        return self._dispatch()

    def _dispatch(self) -> SseEvent | None:
        event = None
        if self._data:
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
        for event in decoder.feed_text(chunk):
            yield event
    last = decoder.flush()
    if last is not None:
        yield last
