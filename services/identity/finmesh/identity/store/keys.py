"""Signing keys: the newest unretired key signs; retired keys stay published until not_after."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.store.schema import signing_keys as t


async def published(conn: AsyncConnection, now: datetime) -> list[Any]:
    query = select(t).where(or_(t.c.not_after.is_(None), t.c.not_after > now)).order_by(t.c.created_at)
    return list((await conn.execute(query)).all())


async def active(conn: AsyncConnection) -> Any:
    query = (
        select(t)
        .where(t.c.retired_at.is_(None), t.c.private_key_enc.is_not(None))
        .order_by(t.c.created_at.desc(), t.c.kid.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()


async def add(conn: AsyncConnection, kid: str, public_key: bytes, private_key_enc: bytes, now: datetime) -> None:
    await conn.execute(
        insert(t).values(kid=kid, public_key=public_key, private_key_enc=private_key_enc, created_at=now)
    )


async def retire_active(conn: AsyncConnection, now: datetime, not_after: datetime) -> None:
    """Stop signing with every current key and destroy its private half; its tokens stay valid until not_after."""
    await conn.execute(
        update(t).where(t.c.retired_at.is_(None)).values(retired_at=now, not_after=not_after, private_key_enc=None)
    )
