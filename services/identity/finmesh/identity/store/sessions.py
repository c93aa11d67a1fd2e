"""Refresh-token sessions: stored as SHA-256 of the token, spent on use, revocable by family or user."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.store.schema import sessions as t


def token_hash(refresh_token: str) -> str:
    # The token is 256 random bits: a plain hash is as strong as a keyed one here.
    return hashlib.sha256(refresh_token.encode()).hexdigest()


async def add(
    conn: AsyncConnection, *, user_id: str, family_id: str, refresh_token: str, now: datetime, expires_at: datetime
) -> str:
    session_id = str(uuid.uuid4())
    await conn.execute(
        insert(t).values(
            session_id=session_id,
            family_id=family_id,
            user_id=user_id,
            token_hash=token_hash(refresh_token),
            created_at=now,
            expires_at=expires_at,
        )
    )
    return session_id


async def find(conn: AsyncConnection, refresh_token: str) -> Any:
    return (await conn.execute(select(t).where(t.c.token_hash == token_hash(refresh_token)))).first()


async def spend(conn: AsyncConnection, session_id: str, now: datetime) -> bool:
    """Mark used; False if a concurrent refresh spent it first."""
    result = await conn.execute(
        update(t)
        .where(t.c.session_id == session_id, t.c.used_at.is_(None), t.c.revoked_at.is_(None))
        .values(used_at=now)
    )
    return result.rowcount == 1


async def revoke_family(conn: AsyncConnection, family_id: str, now: datetime) -> int:
    result = await conn.execute(
        update(t).where(t.c.family_id == family_id, t.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    return int(result.rowcount)


async def revoke_user(conn: AsyncConnection, user_id: str, now: datetime) -> int:
    """Revoke every live family of a user; returns how many sessions (families) were live."""
    live = select(t.c.family_id).where(t.c.user_id == user_id, t.c.revoked_at.is_(None), t.c.used_at.is_(None))
    families = {row.family_id for row in (await conn.execute(live)).all()}
    await conn.execute(update(t).where(t.c.user_id == user_id, t.c.revoked_at.is_(None)).values(revoked_at=now))
    return len(families)
