"""Retry schedule for outgoing messages: exponential backoff with jitter, then the dead letters."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float

    def ceiling(self, failures: int) -> float:
        """Upper bound of the wait after `failures` failed attempts (1 = the first failure)."""
        return min(self.max_seconds, self.base_seconds * 2 ** min(max(failures - 1, 0), 40))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Wait before the next attempt: uniform in [ceiling/2, ceiling] so retries of a burst spread out."""
        ceiling = self.ceiling(failures)
        return (rng or random).uniform(ceiling / 2, ceiling)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def shortest_span(self) -> float:
        """The least total time between the first and the last attempt (every jitter at its minimum)."""
        return sum(self.ceiling(n) / 2 for n in range(1, self.max_attempts))
