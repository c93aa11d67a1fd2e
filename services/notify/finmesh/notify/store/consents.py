"""Consent per (user, category): the current state, and an append-only log of every change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.domain.consent import ConsentRecord
from finmesh.notify.store.schema import consent_log, consents

c = consents


async def get(conn: AsyncConnection, user_id: str, category: str) -> Any:
    return (await conn.execute(select(c).where(c.c.user_id == user_id, c.c.category == category))).first()


def to_record(row: Any) -> ConsentRecord | None:
    if row is None:
        return None
    return ConsentRecord(row.granted, row.quiet_hours_start, row.quiet_hours_end, row.time_zone)


async def record(conn: AsyncConnection, values: dict[str, Any], now: datetime) -> Any:
    """Set the current consent and append the change to the log, in the caller's transaction."""
    key = (c.c.user_id == values["user_id"], c.c.category == values["category"])
    result = await conn.execute(update(c).where(*key).values(recorded_at=now, **values))
    if not result.rowcount:
        await conn.execute(insert(c).values(recorded_at=now, **values))
    await conn.execute(insert(consent_log).values(recorded_at=now, **values))
    return (await conn.execute(select(c).where(*key))).one()
