"""Alerts (incidents) and the durable state of their emergency response."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.schema import alerts, outbox


async def open_incident(conn: AsyncConnection, account_id: str, since: datetime) -> Any:
    """The account's latest incident raised after `since`, if any."""
    query = (
        select(alerts)
        .where(alerts.c.account_id == account_id, alerts.c.created_at > since)
        .order_by(alerts.c.seq.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()


async def insert_alert(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(insert(alerts).values(**values))


async def get(conn: AsyncConnection, alert_id: str) -> Any:
    return (await conn.execute(select(alerts).where(alerts.c.alert_id == alert_id))).first()


async def due(conn: AsyncConnection, now: datetime, limit: int) -> list[Any]:
    """Incidents whose response is unfinished, not parked, due, and not leased by another replica."""
    a = alerts.c
    query = (
        select(alerts)
        .where(
            a.emergency_response_done.is_(False),
            a.parked.is_(False),
            a.next_attempt_at <= now,
            or_(a.lease_until.is_(None), a.lease_until < now),
        )
        .order_by(a.seq)
        .limit(limit)
    )
    return list((await conn.execute(query)).all())


async def claim(conn: AsyncConnection, alert_id: str, now: datetime, lease_until: datetime) -> bool:
    """Lease one incident to this replica; False when another replica holds it (it would only repeat the call)."""
    a = alerts.c
    result = await conn.execute(
        update(alerts)
        .where(
            a.alert_id == alert_id,
            a.emergency_response_done.is_(False),
            a.parked.is_(False),
            or_(a.lease_until.is_(None), a.lease_until < now),
        )
        .values(lease_until=lease_until)
    )
    return bool(result.rowcount)


async def settle(conn: AsyncConnection, alert_id: str, **values: Any) -> None:
    """Record progress (frozen_at, done, attempts, errors) and give the lease back."""
    await conn.execute(update(alerts).where(alerts.c.alert_id == alert_id).values(lease_until=None, **values))


async def event_delivered(conn: AsyncConnection, event_id: str) -> bool:
    query = select(outbox.c.delivered_at).where(outbox.c.event_id == event_id)
    return (await conn.scalar(query)) is not None


async def page(conn: AsyncConnection, levels: Sequence[str], before_seq: int | None, size: int) -> list[Any]:
    query = select(alerts).where(alerts.c.level.in_(list(levels)))
    if before_seq is not None:
        query = query.where(alerts.c.seq < before_seq)
    return list((await conn.execute(query.order_by(alerts.c.seq.desc()).limit(size + 1))).all())
