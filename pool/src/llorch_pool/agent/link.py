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

Several orchestrators (HA): the link talks to one URL of its list at a time. When that one
cannot be reached (connection error, timeout) or answers that it cannot take the pool —
``503`` (any code: ``NOT_LEADER``, a restarting daemon…), ``421`` Misdirected Request,
``502``/``504`` from a proxy in front of a dead daemon — the link moves on: to the URL named
by the answer's ``X-Orchestrator-Leader`` header when that URL is one of the configured ones,
else to the next URL of the list (round robin), after the usual back-off, and registers
again there. Other refusals (401, 409, 400) are the same on every instance: the link stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from orchestrator_core.pools import PoolRegistration

from llorch_pool.protocol import PoolInventory

__all__ = [
    "LEADER_HEADER",
    "NOT_LEADER",
    "BeatGate",
    "LinkStats",
    "OrchestratorLink",
    "split_urls",
]

log = logging.getLogger("llorch_pool.agent.link")

_MIN_EARLY_BEAT_GAP_S = 0.05

LEADER_HEADER = "X-Orchestrator-Leader"
"""Header of a ``503`` naming the orchestrator URL to try next (the leader, when known)."""

NOT_LEADER = "NOT_LEADER"
"""Error code of a ``503`` from an orchestrator that is not the leader."""

_MOVE_ON_STATUSES = frozenset({421, 502, 503, 504})


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """Orchestrator URLs from one string (comma-separated) or several (each may hold commas
    too): stripped, without trailing ``/``, duplicates dropped, order kept."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            url = part.strip().rstrip("/")
            if url and url not in out:
                out.append(url)
    return out


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
    switches: int = 0
    last_error: str | None = None
    last_ok_at: float | None = None


class _LinkError(Exception):
    pass


class _MoveOn(_LinkError):
    """This orchestrator cannot take the pool now: try another (``hint``: which one)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class OrchestratorLink:
    """Registers the pool and keeps it alive with heartbeats (see the module docstring)."""

    def __init__(
        self,
        *,
        orchestrator_url: str | Sequence[str],
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
        self.urls = split_urls(orchestrator_url)
        if not self.urls:
            raise ValueError("at least one orchestrator URL is required")
        self._index = 0
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

    @property
    def base(self) -> str:
        """The orchestrator URL the link talks to now."""
        return self.urls[self._index]

    def _move_on(self, hint: str | None) -> None:
        """Switch to ``hint`` (when it is one of :attr:`urls`) or to the next URL; the pool
        registers again there."""
        if len(self.urls) == 1:
            return
        hinted = split_urls(hint)[0] if hint and split_urls(hint) else None
        if hinted is not None and hinted in self.urls and hinted != self.base:
            target = self.urls.index(hinted)
        else:
            if hinted is not None and hinted not in self.urls:
                log.warning("ignoring %s %r: not a configured orchestrator", LEADER_HEADER, hint)
            target = (self._index + 1) % len(self.urls)
        previous = self.base
        self._index = target
        self.registered = False
        self.stats.switches += 1
        log.info("orchestrator link: moving from %s to %s", previous, self.base)

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
            except _MoveOn as exc:
                delay = self._failed(str(exc))
                self._move_on(exc.hint)
            except _LinkError as exc:
                delay = self._failed(str(exc))
            except httpx.TransportError as exc:
                delay = self._failed(f"orchestrator {self.base} unreachable: {exc!r}")
                self._move_on(None)
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
            _refused("registration", response, self.base)
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
            _refused("heartbeat", response, self.base)
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


def _refused(what: str, response: httpx.Response, base: str) -> None:
    """Raise the failure for a refused call: :class:`_MoveOn` for the answers that mean
    "not here" (see the module docstring), :class:`_LinkError` for the others."""
    message = f"{what} refused by {base}: {_describe(response)}"
    if response.status_code in _MOVE_ON_STATUSES:
        raise _MoveOn(message, response.headers.get(LEADER_HEADER))
    raise _LinkError(message)


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
