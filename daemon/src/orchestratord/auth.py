"""Authentication by mode (docs/design/http-api.md, *Authentication by mode*).

* ``home`` — loopback bind (enforced by the configuration), no token needed: every caller is
  the local operator.
* ``lab`` / ``platform`` — a bearer token is required. Client tokens (``auth.clients``, each
  optionally bound to a tenant) may use the task and scheduler endpoints; pool tokens
  (``auth.pool_tokens``) may register and heartbeat pools. A token is compared with *every*
  configured token in constant time (``hmac.compare_digest``), so timing reveals neither which
  token matched nor how much of it. Tokens are never logged: :func:`~orchestratord.logs.
  fingerprint` gives a short hash that is.

A client token bound to a tenant sees only its tenant's jobs; a client token without a tenant
is an *operator* (sees every job, may swap the scheduler policy).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from orchestrator_core import ErrorCode, OrchestratorConfig, OrchestratorError

from orchestratord.logs import fingerprint, log

__all__ = ["Authenticator", "Principal", "Role"]

Role = Literal["client", "pool", "any"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: ``kind`` is anonymous (home mode), client or pool."""

    kind: Literal["anonymous", "client", "pool"]
    tenant: str | None = None
    fingerprint: str = ""

    @property
    def operator(self) -> bool:
        """True for the home-mode caller and for client tokens without a tenant."""
        return self.kind == "anonymous" or (self.kind == "client" and self.tenant is None)


_ANONYMOUS = Principal("anonymous")


class Authenticator:
    """Checks ``Authorization`` headers against the configured tokens (see module docstring)."""

    def __init__(self, config: OrchestratorConfig) -> None:
        self.required = config.mode != "home"
        self._clients = [(c.token.encode(), c.tenant) for c in config.auth.clients]
        self._pools = [t.encode() for t in config.auth.pool_tokens]

    def authenticate(self, header: str | None, role: Role) -> Principal:
        """The caller's :class:`Principal`; raises UNAUTHORIZED (no or unknown token) or
        FORBIDDEN (a valid token of the wrong kind)."""
        if not self.required:
            return _ANONYMOUS
        token = _bearer(header)
        if token is None:
            log("auth.denied", "missing bearer token", reason="missing")
            raise OrchestratorError("a bearer token is required", code=ErrorCode.UNAUTHORIZED)
        raw = token.encode()
        client_tenant: tuple[str | None] | None = None
        for candidate, tenant in self._clients:  # no early exit: constant time over all
            if hmac.compare_digest(candidate, raw):
                client_tenant = (tenant,)
        is_pool = False
        for candidate in self._pools:
            if hmac.compare_digest(candidate, raw):
                is_pool = True
        fp = fingerprint(token)
        if client_tenant is None and not is_pool:
            log("auth.denied", "unknown token", reason="unknown", token=fp)
            raise OrchestratorError("invalid bearer token", code=ErrorCode.UNAUTHORIZED)
        if role == "pool" and not is_pool:
            log("auth.denied", "client token on a pool endpoint", reason="role", token=fp)
            raise OrchestratorError("this endpoint needs a pool token", code=ErrorCode.FORBIDDEN)
        if role == "client" and client_tenant is None:
            log("auth.denied", "pool token on a client endpoint", reason="role", token=fp)
            raise OrchestratorError("this endpoint needs a client token", code=ErrorCode.FORBIDDEN)
        if client_tenant is not None and role != "pool":
            return Principal("client", tenant=client_tenant[0], fingerprint=fp)
        return Principal("pool", fingerprint=fp)


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
