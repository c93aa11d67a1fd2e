"""What operators watch: the AML reports filed, the alerts raised, and the indicators counted over time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.risk.domain.indicators import IndicatorBucket, buckets
from finmesh.risk.domain.values import AmlKind, WarningLevel
from finmesh.risk.store import alerts, aml, indicators


class Monitoring:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def aml_reports(self, kind: AmlKind | None, before_seq: int | None, size: int) -> list[Any]:
        """Reports newest first, `size` + 1 rows so the caller can tell whether more follow."""
        async with self._engine.connect() as conn:
            return await aml.page(conn, kind, before_seq, size)

    async def alerts(self, min_level: WarningLevel | None, before_seq: int | None, size: int) -> list[Any]:
        """Alerts at `min_level` or above (any level without one), newest first, `size` + 1 rows."""
        levels = min_level.at_least() if min_level else tuple(WarningLevel)
        async with self._engine.connect() as conn:
            return await alerts.page(conn, [lv.value for lv in levels], before_seq, size)

    async def indicators(self, start: datetime, end: datetime, bucket_seconds: int) -> list[IndicatorBucket]:
        """Real (not synthetic) assessments and alerts counted per bucket, inside the database."""
        async with self._engine.connect() as conn:
            counted = await indicators.assessment_buckets(conn, start, end, bucket_seconds)
            raised = await indicators.alert_buckets(conn, start, end, bucket_seconds)
        return buckets(start, end, bucket_seconds, counted, raised)
