"""The retry policy: what to do when a running job's worker fails.

A fault before the first token is retried with exponential backoff and jitter while attempts
remain; a fault after tokens were relayed is final (the client already has part of an
answer, and a second engine would not continue it). The policy only *decides*:
:meth:`RetryPolicy.decide` returns :class:`Retry` (``delay_s``) or :class:`Fail` (code and
message) and the daemon acts on it. Randomness (the jitter) comes from an injected
``random.Random``, so tests can pin it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator_core.errors import ErrorCode

if TYPE_CHECKING:
    from orchestrator_core.config import RetryConfig

__all__ = ["Fail", "Retry", "RetryDecision", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Queue the job again after ``delay_s`` seconds."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Fail:
    """End the job as failed with ``code`` and ``message``."""

    code: ErrorCode
    message: str


RetryDecision = Retry | Fail
"""What :meth:`RetryPolicy.decide` returns."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, before the first token only.

    The delay before retry number ``n`` (1-based) is ``base_delay_s × multiplier^(n-1)``,
    capped at ``max_delay_s``, then scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
    """

    max_attempts: int = 5
    base_delay_s: float = 1.0
    multiplier: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_config(cls, retry: RetryConfig, rng: random.Random | None = None) -> RetryPolicy:
        """The policy of a ``[retry]`` section."""
        return cls(
            max_attempts=retry.max_attempts,
            base_delay_s=retry.base_delay_s,
            multiplier=retry.multiplier,
            max_delay_s=retry.max_delay_s,
            jitter=retry.jitter,
            rng=rng if rng is not None else random.Random(),
        )

    def backoff_s(self, attempts: int) -> float:
        """Delay before retry number ``attempts`` (1-based), jitter included, never negative."""
        delay = min(self.max_delay_s, self.base_delay_s * self.multiplier ** max(0, attempts - 1))
        return max(0.0, delay * (1 + self.jitter * self.rng.uniform(-1.0, 1.0)))

    def decide(
        self, *, attempts: int, tokens_relayed: int, code: ErrorCode, message: str
    ) -> RetryDecision:
        """What to do after a fault (``code``, ``message``) on attempt number ``attempts``
        of a job that had relayed ``tokens_relayed`` tokens."""
        if tokens_relayed > 0:
            return Fail(ErrorCode.WORKER_FAILED, message)
        if attempts >= self.max_attempts:
            return Fail(code, f"{message} (after {attempts} attempts)")
        return Retry(self.backoff_s(attempts))
