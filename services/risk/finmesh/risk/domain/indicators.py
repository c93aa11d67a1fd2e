"""Risk indicators: assessments, declines, reviews and alerts per time bucket, with their rates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from finmesh.risk.domain.windows import bucket_starts, rate_bp


@dataclass(frozen=True)
class IndicatorBucket:
    start: datetime
    assessments: int
    declines: int
    reviews: int
    alerts: int

    @property
    def decline_rate_bp(self) -> int:
        return rate_bp(self.declines, self.assessments)

    @property
    def review_rate_bp(self) -> int:
        return rate_bp(self.reviews, self.assessments)


def buckets(
    start: datetime,
    end: datetime,
    bucket_seconds: int,
    counted: Mapping[int, tuple[int, int, int]],
    raised: Mapping[int, int],
) -> list[IndicatorBucket]:
    """Every bucket of [start, end), empty ones too: `counted` maps a bucket's index to (assessments, declines,
    reviews), `raised` to its alerts."""
    result = []
    for i, bucket_start in enumerate(bucket_starts(start, end, bucket_seconds)):
        total, declines, reviews = counted.get(i, (0, 0, 0))
        result.append(IndicatorBucket(bucket_start, total, declines, reviews, raised.get(i, 0)))
    return result
