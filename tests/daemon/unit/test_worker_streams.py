"""How the worker clients read an engine's stream: SSE events split out of raw reads at the
bytes level (whatever the reads' boundaries, CRLF, comments), the tokens of one read yielded as
one ``tokens`` event without reordering, and cancel closing the engine's connection at once
whether or not the job's consumer is reading."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from orchestrator_core import JobParams
from orchestrator_core.sse import SseByteDecoder, SseDecoder
from orchestratord.openai_workers import OpenAIWorkerClient, _Stream
from orchestratord.workers import (
    ExecuteRequest,
    NativeWorkerClient,
    WorkerClient,
    WorkerEvent,
    WorkerLost,
    native_events,
)

from tests.support.worker_events import flatten_tokens

# --------------------------------------------------------------------------- the byte decoder

_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12
)
_event = st.tuples(
    st.one_of(st.none(), st.sampled_from(["token", "end", "metrics", "x"])),
    st.lists(_text, min_size=1, max_size=3),  # data lines
    st.booleans(),  # a comment line first
)


def _encode(events: Sequence[tuple[str | None, list[str], bool]], eol: str) -> bytes:
    out = []
    for name, lines, comment in events:
        block = [": keep-alive"] if comment else []
        if name is not None:
            block.append(f"event: {name}")
        block += [f"data: {line}" for line in lines]
        out.append(eol.join(block) + eol + eol)
    return "".join(out).encode()


def _split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _decode_all(pieces: Sequence[bytes]) -> list[tuple[str, bytes]]:
    decoder = SseByteDecoder()
    out = [event for piece in pieces for event in decoder.feed(piece)]
    last = decoder.flush()
    return out + ([last] if last is not None else [])


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, max_size=6),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_any_split_of_a_stream_decodes_to_the_same_events(
    events: list[tuple[str | None, list[str], bool]], eol: str, cuts: list[int]
) -> None:
    data = _encode(events, eol)
    whole = _decode_all([data])
    assert _decode_all(_split(data, cuts)) == whole
    # ... the same events as the line-by-line text decoder's
    reference = SseDecoder()
    expected = []
    for line in re.split(r"\r\n|\r|\n", data.decode()):
        event = reference.feed(line)
        if event is not None:
            expected.append((event.event, event.data.encode()))
    assert whole == expected
    assert [raw for _, raw in whole] == [eol_join(lines) for _, lines, _ in events]


def eol_join(lines: list[str]) -> bytes:
    return "\n".join(lines).encode()


def test_every_byte_boundary_of_a_crlf_stream_with_comments() -> None:
    data = b': hello\r\n\r\nevent: token\r\ndata: {"t": "\xc3\xa9"}\r\n\r\ndata: [DONE]\r\n\r\n'
    expected = [("token", b'{"t": "\xc3\xa9"}'), ("message", b"[DONE]")]
    for k in range(len(data) + 1):
        for j in range(k, len(data) + 1):
            assert _decode_all([data[:k], data[k:j], data[j:]]) == expected, (k, j)


# ------------------------------------------------------ OpenAI chunks → events, any split


def _openai_stream(texts: Sequence[str], *, finish: str = "length", eol: bytes = b"\n") -> bytes:
    frames = []
    for i, text in enumerate(texts):
        choice = {
            "index": 0,
            "text": text,
            "finish_reason": finish if i == len(texts) - 1 else None,
        }
        frames.append(b"data: " + json.dumps({"choices": [choice]}).encode())
    usage = {"prompt_tokens": 3, "completion_tokens": len(texts), "total_tokens": 3 + len(texts)}
    frames.append(b"data: " + json.dumps({"choices": [], "usage": usage}).encode())
    frames.append(b"data: [DONE]")
    return b"".join(frame + eol + eol for frame in frames)


def _openai_events(pieces: Sequence[bytes]) -> tuple[list[WorkerEvent], _Stream]:
    stream, decoder, events = _Stream("j"), SseByteDecoder(), []
    for piece in pieces:
        blocks = decoder.feed(piece)
        if blocks:
            read = OpenAIWorkerClient._events(stream, blocks)
            kinds = [e.kind for e in read]
            assert not any(
                a in ("token", "tokens") and b in ("token", "tokens")
                for a, b in itertools.pairwise(kinds)
            ), kinds
            events += read
    return events, stream


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=12),
    eol=st.sampled_from([b"\n", b"\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_any_split_of_an_openai_stream_gives_the_same_tokens(
    texts: list[str], eol: bytes, cuts: list[int]
) -> None:
    data = _openai_stream(texts, eol=eol)
    events, stream = _openai_events(_split(data, cuts))
    flat = flatten_tokens(events)
    assert [e.data["t"] for e in flat] == texts
    assert [e.data["i"] for e in flat] == list(range(len(texts)))
    assert stream.done and stream.tokens == len(texts) and stream.finish == "length"
    assert stream.usage is not None and stream.usage["completion_tokens"] == len(texts)
    whole, _ = _openai_events([data])
    assert whole == [
        WorkerEvent(
            "tokens" if len(texts) > 1 else "token",
            {"i": 0, "t": texts if len(texts) > 1 else texts[0]},
        )
    ]


def test_done_without_a_finish_reason_and_an_error_chunk_end_the_read() -> None:
    events, stream = _openai_events([_openai_stream(["a", "b"], finish="")])
    assert stream.fault is not None and not stream.done
    assert flatten_tokens(events) == [
        WorkerEvent("token", {"i": 0, "t": "a"}),
        WorkerEvent("token", {"i": 1, "t": "b"}),
    ]
    error = b'data: {"error": {"message": "boom"}}\n\n'
    events, stream = _openai_events(
        [_openai_stream(["a", "b"]).split(b'data: {"choices": []')[0] + error + b"data: [DONE]\n\n"]
    )
    assert [e.kind for e in events] == ["tokens", "error"]
    assert events[-1].data == {"code": "WORKER_FAILED", "message": "boom"}
    assert stream.failed


# ---------------------------------------------------------------- native events, batching


def _native(kind: str, data: dict[str, Any]) -> tuple[str, bytes]:
    return kind, json.dumps(data).encode()


def test_native_tokens_of_one_read_are_batched_and_never_reordered() -> None:
    blocks = [
        _native("started", {"job_id": "j"}),
        _native("token", {"i": 0, "t": "a"}),
        _native("token", {"i": 1, "t": "b"}),
        _native("metrics", {"tokens": 2}),
        _native("token", {"i": 2, "t": "c"}),
        _native("end", {"tokens": 3, "finish_reason": "length"}),
        _native("token", {"i": 3, "t": "after the end"}),
    ]
    events, terminal = native_events(blocks)
    assert terminal
    assert events == [
        WorkerEvent("started", {"job_id": "j"}),
        WorkerEvent("tokens", {"i": 0, "t": ["a", "b"]}),
        WorkerEvent("metrics", {"tokens": 2}),
        WorkerEvent("token", {"i": 2, "t": "c"}),
        WorkerEvent("end", {"tokens": 3, "finish_reason": "length"}),
    ]
    events, terminal = native_events([("token", b"not json"), ("metrics", b"[1]")])
    assert not terminal
    assert events == [
        WorkerEvent("token", {"raw": "not json"}),
        WorkerEvent("metrics", {"value": [1]}),
    ]


# ----------------------------------------------------------- against a real (raw) server


class PieceServer:
    """An HTTP/1.1 keep-alive server answering each POST with ``answer(path)``: the chunked
    body's pieces, each written and flushed ``gap_s`` apart (so each arrives in its own
    read); ``None`` for a piece means: stop writing and wait for the client to hang up."""

    def __init__(self, answer: Callable[[str], Sequence[bytes | None]], gap_s: float = 0.003):
        self.answer = answer
        self.gap_s = gap_s
        self.connections = 0
        self.hung_up = asyncio.Event()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                headers = {}
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path = head[0].split()[1]
                self.requests.append((path, headers, body))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for piece in self.answer(path):
                    if piece is None:
                        await writer.drain()
                        await reader.read()  # until the client hangs up
                        self.hung_up.set()
                        return
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                    await asyncio.sleep(self.gap_s)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.set()
        finally:
            writer.close()


def _request(job_id: str = "j", **fields: Any) -> ExecuteRequest:
    return ExecuteRequest.of(
        JobParams(max_tokens=8), job_id=job_id, prompt="p", model="m", **fields
    )


async def _events(client: WorkerClient, url: str, job_id: str = "j") -> list[WorkerEvent]:
    stream = client.execute(url, _request(job_id), correlation_id="c-" + job_id)
    out = []
    try:
        async for event in stream:
            out.append(event)
            if event.kind in ("end", "error"):
                break
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return out


async def test_an_openai_stream_split_at_every_byte_reads_the_same_over_one_connection() -> None:
    texts = ["Hel", "lo", " wörld", "!"]
    data = _openai_stream(texts, eol=b"\r\n")
    cut = 0

    def answer(path: str) -> list[bytes | None]:
        return [p for p in (data[:cut], data[cut:]) if p]

    client = OpenAIWorkerClient(api_key="sk-1")
    server = PieceServer(answer, gap_s=0.002)
    try:
        async with server as url:
            for cut in range(len(data) + 1):
                events = await _events(client, url, f"j{cut}")
                kinds = [e.kind for e in events]
                assert kinds[0] == "started" and kinds[-2:] == ["metrics", "end"], (cut, kinds)
                flat = flatten_tokens(events[1:-2])
                assert [e.data["t"] for e in flat] == texts, cut
                assert [e.data["i"] for e in flat] == [0, 1, 2, 3]
                assert events[-1].data["completion_tokens"] == 4
    finally:
        await client.aclose()
    assert server.connections == 1
    path, headers, body = server.requests[0]
    assert path == "/v1/completions"
    assert headers["authorization"] == "Bearer sk-1"
    assert headers["x-correlation-id"] == "c-j0"
    assert json.loads(body)["stream"] is True


async def test_a_native_stream_split_into_reads_batches_per_read() -> None:
    frames = [
        b'event: started\ndata: {"job_id": "j"}\n\n',
        b'event: token\ndata: {"i": 0, "t": "a"}\n\n',
        b'event: token\ndata: {"i": 1, "t": "b"}\n\nevent: token\ndata: {"i": 2, "t": "c"}\n\n',
        b': keep-alive\n\nevent: token\ndata: {"i": 3, "t": "d"}\n\nevent: metrics\ndata: {}\n\n',
        b'event: end\ndata: {"tokens": 4, "finish_reason": "length"}\n\n',
    ]
    client = NativeWorkerClient()
    try:
        async with PieceServer(lambda path: frames) as url:
            events = await _events(client, url)
    finally:
        await client.aclose()
    assert [(e.kind, e.data.get("t")) for e in events] == [
        ("started", None),
        ("token", "a"),
        ("tokens", ["b", "c"]),
        ("token", "d"),
        ("metrics", None),
        ("end", None),
    ]


async def test_a_stream_that_stops_after_a_token_is_a_lost_worker() -> None:
    client = NativeWorkerClient()
    frames = [b'event: started\ndata: {}\n\nevent: token\ndata: {"i": 0, "t": "a"}\n\n']
    try:
        async with PieceServer(lambda path: frames) as url:
            with pytest.raises(WorkerLost, match="without end"):
                await _events(client, url)
    finally:
        await client.aclose()


async def _hung_up(server: PieceServer) -> None:
    async with asyncio.timeout(2):
        await server.hung_up.wait()


async def test_cancel_closes_the_engine_connection_while_the_consumer_is_not_reading() -> None:
    first = _openai_stream(["a", "b", "c"]).split(b'data: {"choices": []')[0]
    client = OpenAIWorkerClient()
    server = PieceServer(lambda path: [first, None])
    try:
        async with server as url:
            stream = client.execute(url, _request("j-c"), correlation_id="c")
            assert isinstance(stream, AsyncIterator)
            assert (await anext(stream)).kind == "started"
            assert (await anext(stream)).kind == "tokens"
            await client.cancel(url, "j-c", correlation_id="c")  # the consumer is not reading
            await _hung_up(server)
            assert await anext(stream) == WorkerEvent(
                "error", {"code": "CANCELLED", "message": "cancelled"}
            )
            await stream.aclose()
            await client.cancel(url, "j-c", correlation_id="c")  # idempotent, remembered
    finally:
        await client.aclose()


async def test_cancel_before_the_engine_answers_closes_the_connection() -> None:
    """An engine that sends its headers only with the first token (llama.cpp's server
    processing a long prompt): a cancel meanwhile aborts the request at once."""
    hold = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # never answers; returns when the client hangs up
        hold.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = OpenAIWorkerClient()
    try:
        events: list[WorkerEvent] = []

        async def consume() -> None:
            async for event in client.execute(url, _request("j-early"), correlation_id="c"):
                events.append(event)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        await client.cancel(url, "j-early", correlation_id="c")
        async with asyncio.timeout(2):
            await hold.wait()
            await task
        assert events == [WorkerEvent("error", {"code": "CANCELLED", "message": "cancelled"})]
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
