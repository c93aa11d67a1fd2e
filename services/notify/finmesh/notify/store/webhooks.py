"""Registered webhook endpoints (URL and signing secret sealed)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.store.schema import webhooks

w = webhooks


async def active(conn: AsyncConnection) -> list[Any]:
    return list((await conn.execute(select(w).where(w.c.active.is_(True)).order_by(w.c.created_at))).all())


async def get(conn: AsyncConnection, webhook_id: str) -> Any:
    return (await conn.execute(select(w).where(w.c.webhook_id == webhook_id))).first()


async def add(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(w).values(**values))
