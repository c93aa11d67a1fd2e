"""Exponential backoff with jitter: the one schedule every retry in the mesh waits by.

Why not tenacity's wait strategies: the mesh's retries are not loops around a
call. An outbox event, an incident step or a message records its failures in
its row and is picked up again when its `next_attempt_at` comes, possibly by
another replica after a restart; tenacity's strategies take a live
RetryCallState, and its jitter (`wait_random_exponential`) is full jitter,
which lets a retry follow the failure at once. Equal jitter, uniform in
[ceiling/2, ceiling], keeps a floor under every wait and still spreads a
burst of retries out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# 2**60 x any sane base is past every cap; without a bound a row failing for years would build a huge int.
_MAX_DOUBLINGS = 60


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    max_seconds: float

    def ceiling(self, doublings: int) -> float:
        """The longest wait after the base has doubled `doublings` times (0: the base itself), at most the cap."""
        return min(self.max_seconds, self.base_seconds * 2.0 ** min(max(doublings, 0), _MAX_DOUBLINGS))

    def delay(self, doublings: int, rng: random.Random | None = None) -> float:
        """A wait uniform in [ceiling/2, ceiling]."""
        ceiling = self.ceiling(doublings)
        return (rng or random).uniform(ceiling / 2, ceiling)
