"""What notify remembers of a user: locale (from identity's registration event) and time zone (from consent)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.store.schema import profiles

p = profiles


async def locales(conn: AsyncConnection, user_ids: set[str]) -> dict[str, str]:
    if not user_ids:
        return {}
    rows = await conn.execute(select(p.c.user_id, p.c.locale).where(p.c.user_id.in_(user_ids)))
    return {row.user_id: row.locale for row in rows}


async def remember(
    conn: AsyncConnection, user_id: str, now: datetime, *, locale: str = "", time_zone: str = ""
) -> None:
    """Upsert the non-empty fields (portable: update, then insert when nothing was there)."""
    values = {k: v for k, v in (("locale", locale), ("time_zone", time_zone)) if v}
    if not values:
        return
    result = await conn.execute(update(p).where(p.c.user_id == user_id).values(updated_at=now, **values))
    if not result.rowcount:
        await conn.execute(insert(p).values(user_id=user_id, locale=locale, time_zone=time_zone, updated_at=now))
