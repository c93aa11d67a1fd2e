"""Time arithmetic for sliding windows and indicator buckets, and exact integer rates."""

from __future__ import annotations

from datetime import datetime, timedelta

BASIS_POINTS = 10_000
# Keeps an indicator reply bounded whatever range a caller asks for.
MAX_BUCKETS = 1_000


def window_start(now: datetime, seconds: int) -> datetime:
    """First instant still inside a sliding window of `seconds` that ends at `now` (exclusive bound)."""
    return now - timedelta(seconds=seconds)


def in_window(moment: datetime, now: datetime, seconds: int) -> bool:
    """True when `moment` falls in the half-open window (now - seconds, now]."""
    return window_start(now, seconds) < moment <= now


def bucket_count(start: datetime, end: datetime, bucket_seconds: int) -> int:
    """Buckets needed to cover [start, end); the last one may run past `end`."""
    if end <= start:
        return 0
    whole, rest = divmod(end - start, timedelta(seconds=bucket_seconds))
    return whole + (1 if rest else 0)


def bucket_starts(start: datetime, end: datetime, bucket_seconds: int) -> list[datetime]:
    return [start + timedelta(seconds=i * bucket_seconds) for i in range(bucket_count(start, end, bucket_seconds))]


def bucket_index(moment: datetime, start: datetime, bucket_seconds: int) -> int:
    """Which bucket `moment` falls in (floor division, so instants before `start` go negative)."""
    return (moment - start) // timedelta(seconds=bucket_seconds)


def rate_bp(part: int, whole: int) -> int:
    """part / whole in basis points, rounded down; 0 when there is nothing to divide by."""
    if whole <= 0:
        return 0
    return part * BASIS_POINTS // whole


def just_under_floor(threshold: int, margin_bp: int) -> int:
    """Lowest amount still "just under" `threshold`: within margin_bp basis points below it."""
    return threshold - threshold * margin_bp // BASIS_POINTS
