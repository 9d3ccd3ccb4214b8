"""A closed-loop load generator for streamed completions, cheap enough not to be the bottleneck.

Each client owns one kept-alive HTTP/1.1 connection (a bare :class:`asyncio.Protocol`, no
HTTP library: httpx per request costs more CPU than the fastest front doors) and sends its
next request when the previous answer has ended. Requests are pre-built bytes; a response is
parsed only as far as its framing (status line, ``Content-Length`` or chunked) and its
token marker (:data:`fake_engine.TOKEN`):

* TTFT — from sending the request (for ``/v2``: sending ``POST /v2/tasks``) to the first
  bytes that carry a token;
* total — from sending it to the end of the response body (for ``/v2``: the end of the
  ``GET /v2/tasks/{id}/events`` stream);
* a request counts as an error unless its status is 2xx, its body holds exactly the expected
  number of tokens and its end marker (``data: [DONE]``, or ``event: end`` for ``/v2``),
  within the timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from frontdoor.fake_engine import TOKEN

__all__ = ["LoadResult", "Target", "cpu_seconds", "rss_bytes", "run_load", "time_wait_sockets"]

_MARK = TOKEN.strip().encode()


@dataclass
class Target:
    """Where to send and what: ``kind`` is ``"openai"`` (one streamed POST) or ``"v2"``
    (``POST /v2/tasks``, then ``GET /v2/tasks/{id}/events``). Client ``i`` talks to
    ``ports[i % len(ports)]``."""

    name: str
    ports: Sequence[int]
    kind: str = "openai"
    path: str = "/v1/completions"
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    tokens: int = 16

    def request(self, port: int, method: str, path: str, body: bytes = b"") -> bytes:
        """One pre-built HTTP/1.1 request."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Response:
    __slots__ = ("body", "first_token_at", "status")

    def __init__(self) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.first_token_at = 0.0


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 client connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[_Response] | None = None
        self.resp = _Response()
        self.sent_at = 0.0
        self._head = True
        self._chunked = False
        self._remaining = 0
        self.closed = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        if not self.resp.first_token_at and _MARK in data:
            self.resp.first_token_at = time.perf_counter()
        self.buf += data
        self._parse()

    # -- requests ------------------------------------------------------------------------------

    def send(self, raw: bytes) -> asyncio.Future[_Response]:
        """Send ``raw``; the future resolves with the whole response."""
        if self.transport is None or self.closed:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.resp = _Response()
        self._head, self.buf = True, b""
        self.sent_at = time.perf_counter()
        self.transport.write(raw)
        return self.waiter

    def abort(self) -> None:
        """Drop the connection (a timed-out request)."""
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> None:
        if self._head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            self.buf = self.buf[end + 4 :]
            self._head = False
            self.resp.status = int(head[9:12])
            self._chunked = b"transfer-encoding: chunked" in head
            if not self._chunked:
                self._remaining = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        self._remaining = int(line[15:])
        if self._chunked:
            while True:
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    return
                size = int(self.buf[:eol].split(b";", 1)[0], 16)
                if size == 0:
                    if len(self.buf) < eol + 4:
                        return
                    self.buf = self.buf[eol + 4 :]
                    break
                if len(self.buf) < eol + 2 + size + 2:
                    return
                self.resp.body.append(self.buf[eol + 2 : eol + 2 + size])
                self.buf = self.buf[eol + 2 + size + 2 :]
        else:
            if len(self.buf) < self._remaining:
                return
            self.resp.body.append(self.buf[: self._remaining])
            self.buf = self.buf[self._remaining :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.resp)


@dataclass
class LoadResult:
    """What one closed-loop run measured (seconds; lists of successful requests only)."""

    name: str
    elapsed_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0
    cut: bool = False
    aborted: bool = False
    worst_at_s: float = 0.0
    """When the slowest request started, in seconds after the clock started."""

    @property
    def ok(self) -> int:
        """Successful requests."""
        return len(self.total)

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def error(self, why: str) -> None:
        """Count an error, keeping the first few reasons."""
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(why[:200])


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run_load(
    target: Target,
    *,
    clients: int,
    per_client: int | None = None,
    total: int | None = None,
    warmup: int = 2,
    timeout_s: float = 60.0,
    max_s: float | None = None,
    give_up_after: int = 500,
    on_complete: Callable[[int], None] | None = None,
) -> LoadResult:
    """Closed loop: ``clients`` connections, each sending ``per_client`` requests (or, with
    ``total``, taking requests from a shared count until ``total`` are done), after
    ``warmup`` unmeasured ones each; with ``max_s``, no client starts a request after that
    many seconds (:attr:`LoadResult.cut` says so); after ``give_up_after`` failures in a row
    (over all clients) the run stops (:attr:`LoadResult.aborted`). ``on_complete(n)`` is called with the
    running count of successful measured requests."""
    result = LoadResult(target.name)
    loop = asyncio.get_running_loop()
    body = json.dumps(target.body).encode()
    start = asyncio.Event()
    ready: list[int] = []
    started_at = [0.0]
    failing = [0]  # requests failed in a row, over all clients
    max_total = [0.0]
    conns: list[_Connection] = []
    tickets = itertools.count() if total is not None else None

    async def connect(port: int) -> _Connection:
        _, proto = await loop.create_connection(_Connection, "127.0.0.1", port)
        conns.append(proto)
        return proto

    async def one(conn: _Connection, port: int, raw: bytes) -> tuple[float, float]:
        """(ttft, total) of one request, or raise with the reason."""
        t0 = time.perf_counter()
        if target.kind == "v2":
            sub = await conn.send(raw)
            if sub.status != 202:
                raise RuntimeError(f"POST /v2/tasks: {sub.status} {b''.join(sub.body)[:150]!r}")
            job_id = json.loads(b"".join(sub.body))["job_id"]
            resp = await conn.send(target.request(port, "GET", f"/v2/tasks/{job_id}/events"))
            end_mark = b"event: end"
        else:
            resp = await conn.send(raw)
            end_mark = b"[DONE]"
        t1 = time.perf_counter()
        data = b"".join(resp.body)
        if resp.status // 100 != 2:
            raise RuntimeError(f"status {resp.status}: {data[:150]!r}")
        tokens = data.count(_MARK)
        if tokens != target.tokens or end_mark not in data:
            raise RuntimeError(f"{tokens} tokens, end marker {end_mark in data}: {data[-150:]!r}")
        return resp.first_token_at - t0, t1 - t0

    async def client(i: int) -> None:
        port = target.ports[i % len(target.ports)]
        raw = target.request(port, "POST", target.path, body)
        conn = await connect(port)
        n = 0
        while True:
            measured = n >= warmup
            if measured and n == warmup:
                ready.append(i)
                await start.wait()
            if result.aborted:
                break
            if measured:
                if max_s is not None and time.perf_counter() - started_at[0] > max_s:
                    result.cut = True
                    break
                if tickets is not None:
                    if next(tickets) >= (total or 0):
                        break
                elif n - warmup >= (per_client or 0):
                    break
            n += 1
            try:
                if conn.closed:
                    conn = await connect(port)
                ttft, tot = await one(conn, port, raw)
            except (TimeoutError, OSError, RuntimeError, ValueError, KeyError) as exc:
                if measured:
                    result.error(f"{type(exc).__name__}: {exc}")
                conn.abort()
                conn.closed = True
                failing[0] += 1
                if failing[0] >= give_up_after:
                    result.aborted = True
                    break
                await asyncio.sleep(0.05)  # a dead door is not hammered
                continue
            failing[0] = 0
            if measured:
                if not result.total or tot > max_total[0]:
                    max_total[0] = tot
                    result.worst_at_s = time.perf_counter() - tot - started_at[0]
                result.ttft.append(ttft)
                result.total.append(tot)
                if on_complete is not None:
                    on_complete(len(result.total))
        if conn.transport is not None:
            conn.transport.close()

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            for c in conns:
                waiting = c.waiter is not None and not c.waiter.done()
                if waiting and now - c.sent_at > timeout_s and c.waiter is not None:
                    c.waiter.set_exception(TimeoutError(f"no answer in {timeout_s:.0f}s"))
                    c.abort()

    dog = asyncio.create_task(watchdog())
    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    try:
        # every client warmed up (or died trying) before the clock starts
        while len(ready) < clients and not any(t.done() for t in tasks):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        cpu0, t0 = _self_cpu(), time.perf_counter()
        started_at[0] = t0
        start.set()
        await asyncio.gather(*tasks)
        result.elapsed_s = time.perf_counter() - t0
        result.client_cpu_s = _self_cpu() - cpu0
    finally:
        dog.cancel()
        for t in tasks:
            t.cancel()
        for c in conns:
            c.abort()
    return result


# -- process figures from /proc ----------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (all threads)."""
    tree = _children()
    todo, total = [pid], 0.0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def rss_bytes(pid: int) -> int:
    """``VmRSS`` of ``pid`` (bytes)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def time_wait_sockets(ports: Collection[int] = ()) -> int:
    """TCP sockets in TIME_WAIT (what ``ss -tan state time-wait`` counts); with ``ports``,
    only those with one of them at either end."""
    wanted = {f"{p:04X}" for p in ports}
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] != "06":
                        continue
                    local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                    if not wanted or local in wanted or remote in wanted:
                        n += 1
        except OSError:
            continue
    return n
