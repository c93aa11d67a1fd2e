"""The one backoff schedule: doubling from the base, capped, jitter within [ceiling/2, ceiling]."""

import random

from hypothesis import given
from hypothesis import strategies as st

from finmesh.platform.backoff import Backoff


def test_doubles_from_the_base_up_to_the_cap() -> None:
    backoff = Backoff(base_seconds=0.5, max_seconds=30.0)
    assert [backoff.ceiling(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.ceiling(-3) == 0.5
    assert backoff.ceiling(10**9) == 30.0


@given(doublings=st.integers(min_value=0, max_value=10**6), seed=st.integers())
def test_jitter_stays_between_half_the_ceiling_and_the_ceiling(doublings: int, seed: int) -> None:
    backoff = Backoff(base_seconds=0.2, max_seconds=300.0)
    ceiling = backoff.ceiling(doublings)
    assert ceiling / 2 <= backoff.delay(doublings, random.Random(seed)) <= ceiling


def test_a_burst_of_retries_spreads_out() -> None:
    backoff = Backoff(base_seconds=1.0, max_seconds=60.0)
    rng = random.Random(7)
    assert len({round(backoff.delay(3, rng), 6) for _ in range(50)}) > 40
