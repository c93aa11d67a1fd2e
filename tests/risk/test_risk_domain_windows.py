"""Window and bucket arithmetic and integer rates, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from finmesh.risk.domain.windows import (
    bucket_count,
    bucket_index,
    bucket_starts,
    in_window,
    just_under_floor,
    rate_bp,
    window_start,
)

T0 = datetime(2025, 6, 1, tzinfo=UTC)
offsets = st.integers(min_value=0, max_value=10 * 86_400 * 1_000_000)  # microseconds

# No deadline: the shared 2-core machines stall now and then; a slow example is not a wrong one.
PROPERTY = settings(deadline=None, max_examples=60)


@PROPERTY
@given(st.integers(0, 2_000), st.integers(0, 10**6 - 1), st.integers(1, 86_400))
def test_buckets_cover_the_range_exactly(whole: int, extra_us: int, size: int) -> None:
    """Buckets tile [start, end): the last starts before end and ends at or after it."""
    span_us = whole * size * 10**6 // 7 + extra_us  # up to ~300 buckets, often a fraction of one
    end = T0 + timedelta(microseconds=span_us)
    starts = bucket_starts(T0, end, size)
    assert len(starts) == bucket_count(T0, end, size)
    if span_us == 0:
        assert starts == []
        return
    assert starts[0] == T0 and starts[-1] < end <= starts[-1] + timedelta(seconds=size)


@PROPERTY
@given(offsets, st.integers(1, 86_400))
def test_every_instant_falls_in_the_bucket_that_starts_before_it(offset_us: int, size: int) -> None:
    """bucket_index picks the bucket whose start is at or before the instant and whose end is after it."""
    moment = T0 + timedelta(microseconds=offset_us)
    i = bucket_index(moment, T0, size)
    start = T0 + timedelta(seconds=i * size)
    assert start <= moment < start + timedelta(seconds=size)


@PROPERTY
@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_rates_are_floored_basis_points(part: int, whole: int) -> None:
    """Rates are exact integers in [0, 10000] for part <= whole, rounded down; nothing over nothing is 0."""
    part = min(part, whole)
    bp = rate_bp(part, whole)
    assert 0 <= bp <= 10_000
    if whole:
        assert bp * whole <= part * 10_000 < (bp + 1) * whole


def test_sliding_window_is_half_open() -> None:
    """The window (now - w, now] excludes its start instant and includes now."""
    now = T0 + timedelta(hours=1)
    assert window_start(now, 600) == now - timedelta(seconds=600)
    assert not in_window(now - timedelta(seconds=600), now, 600)
    assert in_window(now - timedelta(seconds=599), now, 600) and in_window(now, now, 600)


@PROPERTY
@given(st.integers(1, 10**12), st.integers(1, 5_000))
def test_just_under_floor_stays_below_threshold(threshold: int, margin_bp: int) -> None:
    """The floor of "just under" is within margin_bp of the threshold and never above it."""
    floor = just_under_floor(threshold, margin_bp)
    assert 0 <= floor <= threshold
    assert (threshold - floor) * 10_000 <= threshold * margin_bp
