"""Jobs reuse pooled keep-alive connections to their engine (issue 12: a new TCP connection
per job left thousands of sockets in TIME_WAIT). A tiny HTTP/1.1 engine stand-in counts the
connections it accepts."""

from __future__ import annotations

import asyncio
import json

import pytest
from orchestrator_core import JobParams
from orchestratord.openai_workers import OpenAIWorkerClient
from orchestratord.workers import ExecuteRequest, NativeWorkerClient, WorkerClient


def _chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _native_events(job_id: str) -> list[bytes]:
    return [
        f"event: started\ndata: {json.dumps({'job_id': job_id})}\n\n".encode(),
        b'event: token\ndata: {"i": 0, "t": "hi"}\n\n',
        b'event: end\ndata: {"tokens": 1, "finish_reason": "length"}\n\n',
    ]


def _openai_events() -> list[bytes]:
    choice = {"index": 0, "text": "hi", "finish_reason": None}
    last = {"index": 0, "text": "", "finish_reason": "length"}
    return [
        f"data: {json.dumps({'choices': [choice]})}\n\n".encode(),
        f"data: {json.dumps({'choices': [last]})}\n\n".encode(),
        b"data: [DONE]\n\n",
    ]


class CountingEngine:
    """Answers every POST with a short SSE stream (chunked, keep-alive)."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else {}
                events = (
                    _openai_events()
                    if lines[0].split()[1].startswith("/v1/")
                    else _native_events(body.get("job_id", "j"))
                )
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for event in events:
                    writer.write(_chunk(event))
                    await writer.drain()
                    await asyncio.sleep(0)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _run(client: WorkerClient, url: str, job_id: str) -> list[str]:
    request = ExecuteRequest.of(JobParams(max_tokens=1), job_id=job_id, prompt="p", model="m")
    kinds = []
    stream = client.execute(url, request, correlation_id=job_id)
    async for event in stream:
        kinds.append(event.kind)
        if event.kind in ("end", "error"):
            break  # as the daemon's relay does: it stops reading at the terminal event
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
    return kinds


@pytest.mark.parametrize("make", [NativeWorkerClient, OpenAIWorkerClient])
async def test_twenty_jobs_in_a_row_use_one_connection(make: type[WorkerClient]) -> None:
    client = make()
    engine = CountingEngine()
    try:
        async with engine as url:
            for i in range(20):
                kinds = await _run(client, url, f"job-{i}")
                assert kinds[-1] == "end", kinds
    finally:
        await client.aclose()
    assert engine.connections == 1
