"""Calls the daemon makes to pool agents (docs/design/http-api.md): start and stop workers.

    POST {pool}/v2/workers/start {model_ref, gpu_id, pool_id} -> 2xx {worker_id}
    POST {pool}/v2/workers/stop  {worker_id}                  -> 2xx

A pool refusing a start answers with the error envelope (``INSUFFICIENT_VRAM``,
``MODEL_INCOMPATIBLE``, …); :class:`PoolRequestFailed` carries that code.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import httpx
from orchestrator_core import ErrorCode

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
    """:class:`PoolAgentClient` over HTTP (httpx), with optional bearer token."""

    def __init__(self, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def _post(self, url: str, body: dict[str, str], correlation_id: str) -> httpx.Response:
        try:
            resp = await self._client.post(
                url, json=body, headers={"X-Correlation-Id": correlation_id}
            )
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
        resp = await self._post(endpoint.rstrip("/") + "/v2/workers/start", body, correlation_id)
        try:
            return str(resp.json()["worker_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PoolRequestFailed(ErrorCode.POOL_UNAVAILABLE, "bad start reply") from exc

    async def stop_worker(self, endpoint: str, worker_id: str, *, correlation_id: str) -> None:
        """See :class:`PoolAgentClient`."""
        body = {"worker_id": worker_id}
        await self._post(endpoint.rstrip("/") + "/v2/workers/stop", body, correlation_id)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()
