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

__all__ = ["SseByteDecoder", "SseDecoder", "SseEvent", "aiter_sse", "encode_data", "encode_event"]


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


class SseByteDecoder:
    """Incremental decoder of raw stream *bytes* for hot paths (a client reading an engine):
    :meth:`feed` takes whatever one socket read returned and gives back the ``(event, data)``
    pairs of the events it completed, ``data`` left as bytes (``json.loads`` takes them).

    It splits on blank lines (``\\n\\n``; ``\\r\\n`` and lone ``\\r`` line endings are folded
    to ``\\n`` first, also when a CRLF is split across two reads), so one read costs one split
    and the common event, a single ``data:`` line, no per-line work at all. ``event:`` names
    the event (``"message"`` when absent), several ``data:`` lines are joined with ``\\n``,
    comments (``:``) and other fields (``id:``, ``retry:``) are skipped, a block without a
    ``data:`` line dispatches nothing — as :class:`SseDecoder` does."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Take one read; return the events it completed, in order."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = _fold_cr(buffer)
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        events: list[tuple[str, bytes]] = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:  # the common case
                events.append(("message", block[6:]))
            elif block:
                event = _parse_block(block)
                if event is not None:
                    events.append(event)
        return events

    def flush(self) -> tuple[str, bytes] | None:
        """The event left pending when the stream ended without its blank line, if any."""
        buffer, self._buffer = self._buffer.rstrip(b"\r\n"), b""
        return _parse_block(buffer) if buffer else None


def _fold_cr(buffer: bytes) -> bytes:
    """``\\r\\n`` and lone ``\\r`` → ``\\n``; a trailing ``\\r`` is kept (its ``\\n`` may come
    with the next read)."""
    buffer = buffer.replace(b"\r\n", b"\n")
    if buffer[-1:] == b"\r":
        return buffer[:-1].replace(b"\r", b"\n") + b"\r"
    return buffer.replace(b"\r", b"\n")


def _parse_block(block: bytes) -> tuple[str, bytes] | None:
    event = "message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if not data:
        return None
    return event or "message", b"\n".join(data)
