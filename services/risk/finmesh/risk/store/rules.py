"""Rules activations: the newest row is the rules every replica runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.schema import rules_activations as t


async def latest(conn: AsyncConnection, origin: str | None = None) -> Any:
    query = select(t)
    if origin is not None:
        query = query.where(t.c.origin == origin)
    return (await conn.execute(query.order_by(t.c.id.desc()).limit(1))).first()


async def latest_id(conn: AsyncConnection) -> int | None:
    return await conn.scalar(select(func.max(t.c.id)))


async def hashes_of_version(conn: AsyncConnection, version: str) -> set[str]:
    return set((await conn.execute(select(t.c.content_hash).where(t.c.version == version))).scalars())


async def activate(
    conn: AsyncConnection, *, version: str, source: str, content_hash: str, origin: str, now: datetime
) -> Any:
    statement = (
        insert(t)
        .values(version=version, source=source, content_hash=content_hash, origin=origin, activated_at=now)
        .returning(*t.c)
    )
    return (await conn.execute(statement)).one()
