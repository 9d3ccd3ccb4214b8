"""The pool's link to the orchestrator: registration, heartbeats, back-off.

Contract (docs/design/http-api.md, *Pools*)::

    POST {orch}/v2/pools/register          PoolRegistration JSON     2xx = registered
    POST {orch}/v2/pools/{id}/heartbeat    PoolHeartbeat JSON        2xx = accepted
                                           404 = the orchestrator forgot the pool -> register again
    DELETE {orch}/v2/pools/{id}            on a clean shutdown (best effort)

Every call carries ``Authorization: Bearer <token>`` when a token is configured. A heartbeat
goes out every ``interval_s`` and at once when the worker inventory changed. Failures (the
orchestrator down, 5xx, 409, 401…) are logged and retried with exponential back-off and
jitter, capped at ``max_backoff_s``; the link never raises out of :meth:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx
from orchestrator_core.pools import PoolRegistration

from llorch_pool.protocol import PoolInventory

__all__ = ["BeatGate", "LinkStats", "OrchestratorLink"]

log = logging.getLogger("llorch_pool.agent.link")

_MIN_EARLY_BEAT_GAP_S = 0.05


class BeatGate(Protocol):
    """A hook run before each registration or heartbeat (the simulator uses it to slow or
    stop a pool's heartbeats). Return False to skip this one."""

    async def before_send(self) -> bool:
        """May sleep; False = do not send now."""
        ...


@dataclass(slots=True)
class LinkStats:
    """Counters of the link (exposed in the pool's ``/health``)."""

    registrations: int = 0
    heartbeats_ok: int = 0
    failures: int = 0
    reregistrations_after_404: int = 0
    last_error: str | None = None
    last_ok_at: float | None = None


class _LinkError(Exception):
    pass


class OrchestratorLink:
    """Registers the pool and keeps it alive with heartbeats (see the module docstring)."""

    def __init__(
        self,
        *,
        orchestrator_url: str,
        pool_id: str,
        inventory: Callable[[], PoolInventory],
        http: httpx.AsyncClient,
        token: str | None = None,
        interval_s: float = 5.0,
        max_backoff_s: float = 10.0,
        capabilities: list[str] | None = None,
        version: str = "",
        changed: asyncio.Event | None = None,
        gate: BeatGate | None = None,
    ) -> None:
        self.base = orchestrator_url.rstrip("/")
        self.pool_id = pool_id
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.capabilities = capabilities or ["text-gen"]
        self.version = version
        self.registered = False
        self.stats = LinkStats()
        self._inventory = inventory
        self._http = http
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._changed = changed
        self._gate = gate
        self._consecutive_failures = 0

    def backoff_s(self, failures: int) -> float:
        """Delay before the next try after ``failures`` consecutive failures (0.5 s doubling,
        capped at ``max_backoff_s``, ±20 % jitter)."""
        base: float = min(self.max_backoff_s, 0.5 * 2.0 ** max(0, failures - 1))
        return base * random.uniform(0.8, 1.2)

    async def run(self) -> None:
        """Register, then heartbeat until cancelled. Never raises (except cancellation)."""
        while True:
            delay = self.interval_s
            if self._gate is not None and not await self._gate.before_send():
                await asyncio.sleep(min(self.interval_s, 0.1))
                continue
            try:
                if not self.registered:
                    await self.register()
                else:
                    await self.heartbeat()
                self._consecutive_failures = 0
                self.stats.last_ok_at = time.time()
            except _LinkError as exc:
                delay = self._failed(str(exc))
            except httpx.HTTPError as exc:
                delay = self._failed(f"orchestrator unreachable: {exc!r}")
            except Exception as exc:  # a bug here must not kill the pool
                log.exception("unexpected error in the orchestrator link")
                delay = self._failed(f"internal error: {exc!r}")
            if not self.registered and self._consecutive_failures == 0:
                continue  # a 404 asked us to register again: do it now
            await self._wait(delay, early=self._consecutive_failures == 0)

    def _failed(self, message: str) -> float:
        self._consecutive_failures += 1
        self.stats.failures += 1
        self.stats.last_error = message
        delay = self.backoff_s(self._consecutive_failures)
        log.warning("orchestrator link: %s (retry in %.2fs)", message, delay)
        return delay

    async def _wait(self, delay: float, *, early: bool) -> None:
        """Sleep ``delay``; when ``early``, wake as soon as the inventory changed."""
        if not early or self._changed is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), delay)
            await asyncio.sleep(_MIN_EARLY_BEAT_GAP_S)  # coalesce a burst of changes

    def registration(self) -> PoolRegistration:
        """The registration body built from the current inventory."""
        inv = self._inventory()
        return PoolRegistration(
            pool_id=self.pool_id,
            endpoint=inv.endpoint,
            capabilities=list(self.capabilities),
            gpus=list(inv.gpus),
            workers=list(inv.workers),
            models=list(inv.models),
            model_vram_bytes=dict(inv.model_vram_bytes),
            version=self.version,
        )

    async def register(self) -> None:
        """``POST /v2/pools/register``; raises on failure."""
        if self._changed is not None:
            self._changed.clear()
        body = self.registration().model_dump(mode="json")
        response = await self._http.post(
            f"{self.base}/v2/pools/register", json=body, headers=self._headers, timeout=10.0
        )
        if response.status_code >= 300:
            raise _LinkError(f"registration refused: {_describe(response)}")
        self.registered = True
        self.stats.registrations += 1
        log.info("registered pool %s with %s", self.pool_id, self.base)

    async def heartbeat(self) -> None:
        """``POST /v2/pools/{id}/heartbeat``; a 404 marks the pool unregistered."""
        if self._changed is not None:
            self._changed.clear()
        beat = self._inventory().heartbeat()
        body = beat.model_dump(mode="json")
        url = f"{self.base}/v2/pools/{self.pool_id}/heartbeat"
        response = await self._http.post(url, json=body, headers=self._headers, timeout=10.0)
        if response.status_code == 404:
            self.registered = False
            self.stats.reregistrations_after_404 += 1
            log.warning("orchestrator does not know pool %s: registering again", self.pool_id)
            return
        if response.status_code >= 300:
            raise _LinkError(f"heartbeat refused: {_describe(response)}")
        self.stats.heartbeats_ok += 1

    async def unregister(self, timeout_s: float = 2.0) -> bool:
        """``DELETE /v2/pools/{id}``, best effort; True if the orchestrator accepted it."""
        if not self.registered:
            return False
        try:
            response = await self._http.delete(
                f"{self.base}/v2/pools/{self.pool_id}", headers=self._headers, timeout=timeout_s
            )
        except httpx.HTTPError as exc:
            log.info("could not unregister pool %s: %r", self.pool_id, exc)
            return False
        self.registered = False
        return response.status_code < 300


def _describe(response: httpx.Response) -> str:
    """Status and the error code of an error envelope, when there is one."""
    text = f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return text
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return f"{text} {err.get('code')}: {err.get('message')}"
    return text
