"""A fleet of real processes on loopback for the fleet tests: one ``orchestratord`` and any
number of simulated pools (``llorch-sim pool``), with small blocking helpers to submit jobs
and read what the daemon and the pools report. Everything started is stopped on exit, even
when the test fails."""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from orchestratord.testing.processes import DaemonProcess, PoolProcess, wait_until

TERMINAL = ("completed", "failed", "cancelled")

FLEET_CONFIG = """
[heartbeat]
interval_s = 0.3
missed_threshold = 3

[retry]
base_delay_s = 0.1
max_delay_s = 0.2
jitter = 0.1
max_attempts = 3

[timeout]
cancel_deadline_s = 1.0
reconnect_grace_s = 5.0
"""


class Fleet:
    """orchestratord (``FLEET_CONFIG`` + ``extra_config``) and simulated pools."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        self.workdir = workdir
        self.daemon = DaemonProcess(workdir, FLEET_CONFIG + extra_config)
        self.pools: dict[str, PoolProcess] = {}
        self.http = httpx.Client(timeout=10)

    def __enter__(self) -> Fleet:
        self.daemon.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for pool in self.pools.values():
            pool.stop()
        self.daemon.stop()
        self.http.close()

    @property
    def url(self) -> str:
        """The daemon's base URL."""
        return self.daemon.url

    def add_pool(self, pool_id: str, *args: str, heartbeat_s: float = 0.3) -> PoolProcess:
        """Start ``llorch-sim pool`` with ``args`` and wait until the daemon lists it."""
        log = self.workdir / f"{pool_id}.log"
        argv = ["--heartbeat-interval", str(heartbeat_s), *args]
        pool = PoolProcess.sim(self.url, pool_id, log, *argv).start()
        self.pools[pool_id] = pool
        wait_until(lambda: self.pool(pool_id)["status"] == "online", 15, f"{pool_id} online")
        return pool

    def pool(self, pool_id: str) -> dict[str, Any]:
        """``GET /v2/pools/{id}``."""
        r = self.http.get(f"{self.url}/v2/pools/{pool_id}")
        r.raise_for_status()
        return dict(r.json())

    def inventory(self, pool_id: str) -> dict[str, Any]:
        """The pool's own ``GET /v2/inventory``."""
        return dict(self.http.get(self.pools[pool_id].url + "/v2/inventory").json())

    def sim_faults(self, pool_id: str, **faults: Any) -> None:
        """``POST {pool}/sim/faults``."""
        self.http.post(self.pools[pool_id].url + "/sim/faults", json=faults).raise_for_status()

    def submit(self, model: str, **fields: Any) -> str:
        """Submit a job; returns its id."""
        body = {"model": model, "prompt": "Tell me about GPUs", "max_tokens": 8, **fields}
        r = self.http.post(self.url + "/v2/tasks", json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v2/tasks/{id}``."""
        r = self.http.get(f"{self.url}/v2/tasks/{job_id}")
        r.raise_for_status()
        return dict(r.json())

    def wait_job(self, job_id: str, check: Any, what: str, timeout_s: float = 20) -> dict[str, Any]:
        """Poll the job until ``check(job)`` holds; returns the job."""
        out: dict[str, Any] = {}

        def ok() -> bool:
            out.update(self.job(job_id))
            return bool(check(out))

        try:
            wait_until(ok, timeout_s, f"{job_id}: {what}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last seen {out}\n{self.daemon.log_tail(3000)}") from None
        return out

    def wait_terminal(self, job_id: str, timeout_s: float = 20) -> dict[str, Any]:
        """Poll the job until it has finished; returns it."""
        return self.wait_job(job_id, lambda j: j["status"] in TERMINAL, "finished", timeout_s)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the daemon's Prometheus samples ``orchestratord_<name>`` whose labels
        include ``labels``."""
        text = self.http.get(self.url + "/metrics").text
        total = 0.0
        pattern = re.compile(rf"^orchestratord_{re.escape(name)}(?:\{{(.*)\}})? (\S+)$")
        for line in text.splitlines():
            m = pattern.match(line)
            if m is None:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
        return total
