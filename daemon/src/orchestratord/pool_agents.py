"""Calls the daemon makes to pool agents (docs/design/http-api.md): start and stop workers.

    POST {pool}/v2/workers/start {model_ref, gpu_id, pool_id} -> 2xx {worker_id}
    POST {pool}/v2/workers/stop  {worker_id}                  -> 2xx

A pool refusing a start answers with the error envelope (``INSUFFICIENT_VRAM``,
``MODEL_INCOMPATIBLE``, …); :class:`PoolRequestFailed` carries that code.

Authentication: a pool agent with an ``api_token`` requires a bearer token on these calls,
and accepts either its ``api_token`` or its own orchestrator token — the pool token it
registers with, which the daemon knows (``auth.pool_tokens``). The daemon cannot know the
``api_token`` (registrations do not carry it), so it sends the pool token back:
:meth:`HttpPoolAgentClient.for_config` picks, per pool endpoint, the configured pool token
whose fingerprint the pool registered with (``registered_fingerprint``), else the only
configured pool token when there is exactly one, else none (a token is never sent to a pool
that did not prove it holds it). Home mode: no token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import httpx
from orchestrator_core import ErrorCode, OrchestratorConfig

from orchestratord.logs import fingerprint

__all__ = ["HttpPoolAgentClient", "PoolAgentClient", "PoolRequestFailed"]


class PoolRequestFailed(Exception):
    """A pool agent refused or could not be reached; ``code`` is a stable error code and
    ``details`` the envelope's details (e.g. ``vram_needed_bytes`` of an
    ``INSUFFICIENT_VRAM`` refusal)."""

    def __init__(
        self, code: ErrorCode | str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


@runtime_checkable
class PoolAgentClient(Protocol):
    """How the daemon asks a pool to start or stop a worker."""

    async def start_worker(
        self, endpoint: str, *, pool_id: str, model_ref: str, gpu_id: str, correlation_id: str
    ) -> str:
        """Start a worker; returns its id."""
        ...

    async def stop_worker(self, endpoint: str, worker_id: str, *, correlation_id: str) -> None:
        """Stop a worker (idempotent)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class HttpPoolAgentClient:
    """:class:`PoolAgentClient` over HTTP (httpx), with an optional bearer token: ``token``
    for every pool, or ``token_for(endpoint)`` per pool (``None`` = fall back to ``token``).
    The daemon builds it with :meth:`for_config`."""

    def __init__(
        self,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        token_for: Callable[[str], str | None] | None = None,
    ) -> None:
        self._token = token
        self._token_for = token_for
        self._client = httpx.AsyncClient(timeout=timeout_s)

    @classmethod
    def for_config(
        cls,
        config: OrchestratorConfig,
        *,
        registered_fingerprint: Callable[[str], str | None] | None = None,
        timeout_s: float = 30.0,
    ) -> HttpPoolAgentClient:
        """The client for ``config`` (see the module docstring). ``registered_fingerprint``
        maps a pool's endpoint to the fingerprint (:func:`orchestratord.logs.fingerprint`)
        of the token that pool registered with, when known."""
        tokens = list(config.auth.pool_tokens) if config.mode != "home" else []
        if not tokens:
            return cls(timeout_s=timeout_s)
        by_fingerprint = {fingerprint(t): t for t in tokens}
        only = tokens[0] if len(set(tokens)) == 1 else None

        def token_for(endpoint: str) -> str | None:
            fp = registered_fingerprint(endpoint) if registered_fingerprint else None
            return by_fingerprint.get(fp) if fp else None

        return cls(token=only, token_for=token_for, timeout_s=timeout_s)

    def token_for(self, endpoint: str) -> str | None:
        """The bearer token sent to the pool at ``endpoint`` (None = no header)."""
        chosen = self._token_for(endpoint) if self._token_for is not None else None
        return chosen or self._token

    async def _post(
        self, endpoint: str, path: str, body: dict[str, str], correlation_id: str
    ) -> httpx.Response:
        headers = {"X-Correlation-Id": correlation_id}
        url = endpoint.rstrip("/") + path
        token = self.token_for(endpoint)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = await self._client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise PoolRequestFailed(
                ErrorCode.POOL_UNAVAILABLE, f"pool unreachable: {exc!r}"
            ) from exc
        if resp.status_code // 100 == 2:
            return resp
        code, message = str(ErrorCode.POOL_UNAVAILABLE), f"pool answered {resp.status_code}"
        details: dict[str, Any] = {}
        try:
            err = resp.json().get("error", {})
            code, message = str(err.get("code") or code), str(err.get("message") or message)
            if isinstance(err.get("details"), dict):
                details = err["details"]
        except (ValueError, AttributeError):
            pass
        raise PoolRequestFailed(code, message, details)

    async def start_worker(
        self, endpoint: str, *, pool_id: str, model_ref: str, gpu_id: str, correlation_id: str
    ) -> str:
        """See :class:`PoolAgentClient`."""
        body = {"model_ref": model_ref, "gpu_id": gpu_id, "pool_id": pool_id}
        resp = await self._post(endpoint, "/v2/workers/start", body, correlation_id)
        try:
            return str(resp.json()["worker_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PoolRequestFailed(ErrorCode.POOL_UNAVAILABLE, "bad start reply") from exc

    async def stop_worker(self, endpoint: str, worker_id: str, *, correlation_id: str) -> None:
        """See :class:`PoolAgentClient`."""
        body = {"worker_id": worker_id}
        await self._post(endpoint, "/v2/workers/stop", body, correlation_id)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()
