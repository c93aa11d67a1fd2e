"""Retry schedule for outgoing messages: the mesh's backoff with jitter, then the dead letters."""

from __future__ import annotations

import random
from dataclasses import dataclass

from finmesh.platform.backoff import Backoff


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.base_seconds, self.max_seconds)

    def ceiling(self, failures: int) -> float:
        """Upper bound of the wait after `failures` failed attempts: the first failure waits up to the base."""
        return self.backoff.ceiling(failures - 1)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Wait before the next attempt: uniform in [ceiling/2, ceiling] so retries of a burst spread out."""
        return self.backoff.delay(failures - 1, rng)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def shortest_span(self) -> float:
        """The least total time between the first and the last attempt (every jitter at its minimum)."""
        return sum(self.ceiling(n) / 2 for n in range(1, self.max_attempts))
