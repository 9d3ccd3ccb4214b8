"""Real processes for acceptance tests and benchmarks: an ``orchestratord`` daemon, simulated
engines (``llorch-sim engine``), pool agents (``llorch-pool`` or ``llorch-sim pool``) and a
stand-in pool that registers those engines and sends heartbeats over real HTTP.

Every helper picks free loopback ports, waits with a deadline (polling, no fixed sleeps) and
is a context manager that kills what it started, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

__all__ = [
    "DaemonProcess",
    "EngineProcess",
    "HeartbeatingPool",
    "PoolProcess",
    "free_port",
    "stop_child",
    "wait_until",
]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.02) -> None:
    """Poll ``predicate()`` until it is true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def _script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed")
    return found


def stop_child(proc: subprocess.Popen[Any] | None, *, grace_s: float) -> None:
    """Stop a child started with ``start_new_session=True``: SIGTERM, then SIGKILL to its
    whole process group after ``grace_s``; close its stdout pipe if it has one."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


class _ChildProcess:
    """What the process wrappers share: their log's tail and ``with`` support (start on
    entry unless started, stop on exit, even when the block fails)."""

    log_path: Path
    proc: subprocess.Popen[Any] | None

    def start(self) -> Self:
        """Start the process and wait until it is ready."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the process."""
        raise NotImplementedError

    def log_tail(self, n: int = 4000) -> str:
        """The end of the process's log."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        return ""

    def __enter__(self) -> Self:
        return self.start() if self.proc is None else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class DaemonProcess(_ChildProcess):
    """``orchestratord`` as a child process on a free port, with its config written to
    ``workdir/orchestrator.toml`` and its SQLite data in ``workdir/data``."""

    def __init__(self, workdir: Path, config_toml: str = "", *, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "orchestrator.toml"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "orchestratord.log"
        self.config_path.write_text(config_toml, encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, ready_timeout_s: float = 20.0, until: str = "/ready") -> DaemonProcess:
        """Start and wait until ``until`` answers 200 (``/health`` for a daemon that may be
        a follower: ``/ready`` is 200 only on the leader)."""
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                _script("orchestratord"),
                "--config",
                str(self.config_path),
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            stdout=logf,
            stderr=logf,
            start_new_session=True,
        )
        logf.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"orchestratord exited: {self.log_tail()}")
            return httpx.get(self.url + until, timeout=1.0).status_code == 200

        wait_until(ready, ready_timeout_s, f"orchestratord {until}")
        return self

    def kill9(self) -> None:
        """``kill -9``: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill9()


class EngineProcess:
    """One ``llorch-sim engine`` child process (a simulated engine, a test tool)."""

    def __init__(self, model: str = "m1", *, worker_id: str = "e0", args: Sequence[str] = ()):
        self.model = model
        self.worker_id = worker_id
        self.args = list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout_s: float = 20.0) -> EngineProcess:
        """Start and read the URL it prints."""
        self.proc = subprocess.Popen(
            [
                _script("llorch-sim"),
                "engine",
                "--model",
                self.model,
                "--worker-id",
                self.worker_id,
                "--port",
                "0",
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].startswith("http"):
            self.stop()
            raise RuntimeError("llorch-sim engine did not print its URL")
        self.url = line[0].strip()
        return self

    @property
    def alive(self) -> bool:
        """Is the process running?"""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM; SIGKILL to its process group after 5 s; close its URL pipe."""
        stop_child(self.proc, grace_s=5.0)

    def __enter__(self) -> EngineProcess:
        return self.start() if self.proc is None else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PoolProcess(_ChildProcess):
    """A pool agent as a child process: ``llorch-pool --config FILE`` (:meth:`agent`) or a
    simulated pool, ``llorch-sim pool …`` (:meth:`sim`). Its URL is the first stdout line; its
    log goes to ``log_path``. :meth:`stop` sends SIGTERM (the agent stops its engines and
    unregisters), then SIGKILL to its process group after ``stop_timeout_s``."""

    def __init__(self, argv: Sequence[str], log_path: Path, *, stop_timeout_s: float = 15.0):
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    @classmethod
    def agent(cls, config_path: Path, log_path: Path | None = None) -> PoolProcess:
        """``llorch-pool --config config_path`` (the real agent)."""
        log_path = log_path or config_path.with_suffix(".log")
        return cls([_script("llorch-pool"), "--config", str(config_path)], log_path)

    @classmethod
    def sim(cls, orchestrator_url: str, pool_id: str, log_path: Path, *args: str) -> PoolProcess:
        """``llorch-sim pool --orchestrator URL --pool-id ID ARGS…`` (a simulated pool)."""
        argv = [_script("llorch-sim"), "pool", "--orchestrator", orchestrator_url]
        return cls([*argv, "--pool-id", pool_id, "--port", "0", *args], log_path)

    def start(self, timeout_s: float = 30.0) -> PoolProcess:
        """Start and read the URL it prints."""
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=logf,
            text=True,
            start_new_session=True,
        )
        logf.close()
        line: list[str] = []
        out = self.proc.stdout
        assert out is not None
        reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].startswith("http"):
            self.stop()
            raise RuntimeError(f"{self.argv[0]} did not print its URL: {self.log_tail()}")
        self.url = line[0].strip()
        return self

    @property
    def alive(self) -> bool:
        """Is the process running?"""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM; SIGKILL to the whole process group after ``stop_timeout_s``."""
        stop_child(self.proc, grace_s=self.stop_timeout_s)


@dataclass
class HeartbeatingPool:
    """A stand-in pool agent: registers ``engines`` as the workers of ``pool_id`` with the
    daemon at ``url`` and heartbeats every ``interval_s`` from a thread, reporting only the
    engines whose process is alive (as a real agent does). Re-registers after a 404 (the
    daemon restarted and forgot its pools)."""

    url: str
    engines: list[EngineProcess]
    pool_id: str = "pool-t"
    interval_s: float = 0.2
    token: str | None = None
    protocol: str = "llorch"
    """How the daemon talks to the engines: ``llorch`` (native) or ``openai``."""
    max_concurrency: int = 1
    """Jobs each engine takes at once."""
    others: Sequence[str] = ()
    """More orchestrator URLs (several daemons on one database): on a refused connection or
    a 503 the pool moves to the next one, or to the leader a follower names
    (``X-Orchestrator-Leader``), and registers there."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def workers(self) -> list[dict[str, Any]]:
        """Worker entries of the alive engines."""
        return [
            {
                "worker_id": e.worker_id,
                "model_ref": e.model,
                "gpu_ids": ["0"],
                "status": "ready",
                "uri": e.url,
                "protocol": self.protocol,
                "max_concurrency": self.max_concurrency,
            }
            for e in self.engines
            if e.alive
        ]

    def register(self) -> None:
        """``POST /v2/pools/register``."""
        body = {
            "pool_id": self.pool_id,
            "endpoint": f"http://127.0.0.1:9/{self.pool_id}",
            "gpus": [{"gpu_id": "0", "vram_total_bytes": 1 << 34, "vram_free_bytes": 1 << 33}],
            "workers": self.workers(),
            "models": sorted({e.model for e in self.engines}),
        }
        for _ in range(3 * (1 + len(self.others))):
            try:
                r = httpx.post(self.url + "/v2/pools/register", json=body, headers=self._headers())
            except httpx.TransportError:
                self._next(None)
                time.sleep(0.1)
                continue
            if r.status_code == 503:  # a follower: go to the leader
                self._next(r.headers.get("x-orchestrator-leader"))
                time.sleep(0.1)
                continue
            r.raise_for_status()
            return
        raise RuntimeError(f"no orchestrator took the pool's registration: {self.url}")

    def beat(self) -> None:
        """One heartbeat (re-registering when the daemon does not know the pool)."""
        body = {"sent_at": time.time(), "workers": self.workers(), "gpus": []}
        try:
            r = httpx.post(
                f"{self.url}/v2/pools/{self.pool_id}/heartbeat",
                json=body,
                headers=self._headers(),
                timeout=2.0,
            )
        except httpx.HTTPError:
            self._next(None)
            raise
        if r.status_code == 503:
            self._next(r.headers.get("x-orchestrator-leader"))
        elif r.status_code == 404:
            self.register()

    def _next(self, hint: str | None) -> None:
        """Move to the leader named by ``hint`` (one of ours), else to the next URL."""
        urls = [self.url, *(u for u in self.others if u != self.url)]
        if len(urls) == 1:
            return
        if hint and hint in urls and hint != self.url:
            self.others = [u for u in urls if u != hint]
            self.url = hint
        else:  # round robin
            self.url, self.others = urls[1], [*urls[2:], urls[0]]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(httpx.HTTPError, RuntimeError):  # keep beating
                self.beat()

    def __enter__(self) -> HeartbeatingPool:
        self.register()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


@contextlib.contextmanager
def engines(n: int, model: str = "m1", args: Sequence[str] = ()) -> Iterator[list[EngineProcess]]:
    """``n`` simulated engines ``e0..e{n-1}``, stopped on exit."""
    started: list[EngineProcess] = []
    try:
        for i in range(n):
            started.append(EngineProcess(model, worker_id=f"e{i}", args=args).start())
        yield started
    finally:
        for e in started:
            e.stop()
