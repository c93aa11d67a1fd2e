"""One-time-code challenges: created with a keyed hash of the code, attempts counted apart from the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.store.schema import challenges as t


async def add(
    conn: AsyncConnection,
    *,
    challenge_id: str,
    user_id: str,
    purpose: str,
    channel: str,
    code_hash: str | None,
    now: datetime,
    expires_at: datetime,
    password_ok: bool | None = None,
) -> None:
    await conn.execute(
        insert(t).values(
            challenge_id=challenge_id,
            user_id=user_id,
            purpose=purpose,
            channel=channel,
            code_hash=code_hash,
            created_at=now,
            expires_at=expires_at,
            attempts=0,
            password_ok=password_ok,
        )
    )


async def get(conn: AsyncConnection, challenge_id: str) -> Any:
    return (await conn.execute(select(t).where(t.c.challenge_id == challenge_id))).first()


async def count_since(conn: AsyncConnection, user_id: str, purpose: str, since: datetime) -> int:
    query = (
        select(func.count())
        .select_from(t)
        .where(t.c.user_id == user_id, t.c.purpose == purpose, t.c.created_at >= since)
    )
    return int(await conn.scalar(query) or 0)


async def take_attempt(conn: AsyncConnection, challenge_id: str) -> Any:
    """Count one attempt (committed whatever the code turns out to be) and return the row after it."""
    await conn.execute(update(t).where(t.c.challenge_id == challenge_id).values(attempts=t.c.attempts + 1))
    return await get(conn, challenge_id)


async def use(conn: AsyncConnection, challenge_id: str, now: datetime) -> bool:
    """Spend the challenge; False if a concurrent attempt spent it first."""
    result = await conn.execute(
        update(t).where(t.c.challenge_id == challenge_id, t.c.used_at.is_(None)).values(used_at=now)
    )
    return result.rowcount == 1


async def forget_user(conn: AsyncConnection, user_id: str, now: datetime) -> None:
    await conn.execute(update(t).where(t.c.user_id == user_id, t.c.used_at.is_(None)).values(used_at=now))
