"""A FAKE OpenAI-compatible engine for the front-door benchmark: no model, no delay.

It answers as fast as a raw asyncio server can (uvloop when installed), so that what a front
door in front of it costs is what a benchmark sees:

* ``POST /v1/completions`` — ``stream: true``: an SSE stream in OpenAI's chunk format, one
  chunk per token (``max_tokens`` of them, 16 when absent), ``finish_reason: "length"`` on the
  last, a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``; without
  ``stream`` one JSON completion. Every token's text is :data:`TOKEN` (clients count tokens
  by counting it, whatever a proxy does to the JSON around it).
* ``POST /v1/chat/completions`` — the same in the chat chunk format (``delta.content``), for
  proxies that turn completions into chat.
* ``GET /v1/models``, ``GET /health``, ``GET /`` — what routers probe.

HTTP/1.1 keep-alive; request bodies need ``Content-Length`` (every client here sends one).

Run: python benchmarks/frontdoor/fake_engine.py --port 0 [--model fake-model]
(prints its URL on the first stdout line).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import time
from collections.abc import Coroutine
from typing import Any, cast

TOKEN = " qtok"
"""The text of every token: ``q`` is not a hex digit, so no chunk-size line can fake it."""

DEFAULT_TOKENS = 16
_MAX_TOKENS = 4096
_ids = itertools.count()


def _frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _head(status: str, content_type: bytes, length: int | None) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n%s\r\n"
        b"x-request-id: fake-%d\r\n\r\n" % (status.encode(), content_type, framing, next(_ids))
    )


def _json(status: str, body: object) -> bytes:
    raw = json.dumps(body).encode()
    return _head(status, b"application/json", len(raw)) + raw


def _completion_stream(model: str, n: int, usage: bool, chat: bool) -> bytes:
    """The whole SSE answer of one streamed completion, framed, ready to write."""
    cid = f"cmpl-fake-{next(_ids)}"
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    prefix = f'{{"id":"{cid}","object":"{obj}","created":{created},"model":{json.dumps(model)},'
    parts = [_head("200 OK", b"text/event-stream", None)]
    for i in range(n):
        finish = '"length"' if i == n - 1 else "null"
        if chat:
            role = '"role":"assistant",' if i == 0 else ""
            choice = f'{{"index":0,"delta":{{{role}"content":"{TOKEN}"}},"finish_reason":{finish}}}'
        else:
            choice = f'{{"index":0,"text":"{TOKEN}","logprobs":null,"finish_reason":{finish}}}'
        parts.append(_frame(f'data: {prefix}"choices":[{choice}]}}\n\n'.encode()))
    if usage:
        counts = f'{{"prompt_tokens":8,"completion_tokens":{n},"total_tokens":{n + 8}}}'
        parts.append(_frame(f'data: {prefix}"choices":[],"usage":{counts}}}\n\n'.encode()))
    parts.append(_frame(b"data: [DONE]\n\n"))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def _completion_json(model: str, n: int, chat: bool) -> bytes:
    text = TOKEN * n
    choice: dict[str, object] = {"index": 0, "finish_reason": "length", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return _json(
        "200 OK",
        {
            "id": f"cmpl-fake-{next(_ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8},
        },
    )


class FakeEngine(asyncio.Protocol):
    """One client connection: parse pipelined HTTP/1.1 requests, answer each at once."""

    model = "fake-model"

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._send(_json("411 Length Required", {"error": "Content-Length required"}))
                self.transport.close()
                return
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, _, rest = lines[0].partition(" ")
            path = rest.partition(" ")[0].split("?", 1)[0]
            self._send(self.answer(method, path, body))
            if headers.get("connection", "").lower() == "close":
                self.transport.close()

    def _send(self, raw: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(raw)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def answer(self, method: str, path: str, body: bytes) -> bytes:
        """The full HTTP response to one request."""
        path = path.rstrip("/") or "/"
        if method == "GET" and path in ("/v1/models", "/models"):
            model = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}
            return _json("200 OK", {"object": "list", "data": [model]})
        if method == "GET" and path in ("/health", "/", "/ready", "/health_generate"):
            return _json("200 OK", {"status": "ok", "fake": True})
        chat = path in ("/v1/chat/completions", "/chat/completions")
        if method == "POST" and (chat or path in ("/v1/completions", "/completions")):
            try:
                req = json.loads(body or b"{}")
                n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
            except (ValueError, TypeError, AttributeError):
                return _json("400 Bad Request", {"error": {"message": "bad JSON body"}})
            n = max(1, min(n, _MAX_TOKENS))
            model = str(req.get("model") or self.model)
            if req.get("stream"):
                opts = req.get("stream_options") or {}
                usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
                return _completion_stream(model, n, usage, chat)
            return _completion_json(model, n, chat)
        return _json("404 Not Found", {"error": {"message": f"no route {method} {path}"}})


async def serve(host: str, port: int, model: str) -> None:
    """Serve until SIGTERM/SIGINT; print the URL first."""
    FakeEngine.model = model
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeEngine, host, port, backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI engine (benchmarks only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args()
    run_loop(serve(args.host, args.port, args.model))


def run_loop(main_coro: Coroutine[Any, Any, None]) -> None:
    """``uvloop.run`` when uvloop is installed, else ``asyncio.run``."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(main_coro)
    else:
        uvloop.run(main_coro)


if __name__ == "__main__":
    main()
