"""The PII access log: one row per RevealPersonalData, written before any clear value leaves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.store.schema import pii_access_log as t


async def record(
    conn: AsyncConnection, *, user_id: str, accessor_id: str, fields: list[str], purpose: str, now: datetime
) -> None:
    await conn.execute(
        insert(t).values(
            user_id=user_id, accessor_id=accessor_id, fields=",".join(fields), purpose=purpose, accessed_at=now
        )
    )


async def page(conn: AsyncConnection, *, user_id: str, after_id: int, limit: int) -> list[Any]:
    query = select(t).where(t.c.id > after_id).order_by(t.c.id).limit(limit)
    if user_id:
        query = query.where(t.c.user_id == user_id)
    return list((await conn.execute(query)).all())
