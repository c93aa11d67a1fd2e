"""Risk indicators: assessments, declines, reviews and alerts counted per time bucket inside the database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnClause, Integer, case, cast, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.domain.values import Decision
from finmesh.risk.store.schema import alerts, assessments


def _bucket(conn: AsyncConnection, column: Any, start: datetime, bucket_seconds: int) -> Any:
    # Integers inlined on purpose (they are validated ints, not caller text):
    # PostgreSQL only accepts GROUP BY on an expression identical to the
    # selected one, and separately bound parameters would differ.
    start_epoch: ColumnClause[Any] = literal_column(str(int(start.astimezone(UTC).timestamp())))
    size: ColumnClause[Any] = literal_column(str(int(bucket_seconds)))
    if conn.dialect.name == "postgresql":
        return cast(func.floor((func.extract("epoch", column) - start_epoch) / size), BigInteger)
    # SQLite keeps datetimes as ISO text in UTC; strftime('%s') reads them as epoch seconds. Floor division:
    # SQLAlchemy's `/` is true division (it renders `/ (3600 + 0.0)`), which gave every second its own group,
    # and the groups of one bucket then overwrote each other in the caller's dict (only the last second counted).
    return (cast(func.strftime("%s", column), Integer) - start_epoch) // size


async def assessment_buckets(
    conn: AsyncConnection, start: datetime, end: datetime, bucket_seconds: int
) -> dict[int, tuple[int, int, int]]:
    """bucket index -> (assessments, declines, reviews); synthetic load-test traffic is left out."""
    a = assessments.c
    bucket = _bucket(conn, a.created_at, start, bucket_seconds).label("bucket")
    query = (
        select(
            bucket,
            func.count(),
            func.sum(case((a.decision == Decision.DECLINE.value, 1), else_=0)),
            func.sum(case((a.decision == Decision.REVIEW.value, 1), else_=0)),
        )
        .where(a.created_at >= start, a.created_at < end, a.synthetic == 0)
        .group_by(bucket)
    )
    rows = (await conn.execute(query)).all()
    return {int(r[0]): (int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in rows}


async def alert_buckets(conn: AsyncConnection, start: datetime, end: datetime, bucket_seconds: int) -> dict[int, int]:
    bucket = _bucket(conn, alerts.c.created_at, start, bucket_seconds).label("bucket")
    query = select(bucket, func.count()).where(alerts.c.created_at >= start, alerts.c.created_at < end).group_by(bucket)
    return {int(r[0]): int(r[1]) for r in (await conn.execute(query)).all()}
