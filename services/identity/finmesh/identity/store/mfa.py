"""TOTP enrolments."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.store.schema import totp


async def get_totp(conn: AsyncConnection, user_id: str) -> Any:
    return (await conn.execute(select(totp).where(totp.c.user_id == user_id))).first()


async def totp_enabled(conn: AsyncConnection, user_id: str) -> bool:
    row = await get_totp(conn, user_id)
    return bool(row is not None and row.enabled)


async def put_totp(conn: AsyncConnection, user_id: str, secret_enc: bytes) -> None:
    """A new, not yet confirmed secret (replacing an unconfirmed one)."""
    await conn.execute(delete(totp).where(totp.c.user_id == user_id))
    await conn.execute(insert(totp).values(user_id=user_id, secret_enc=secret_enc, enabled=False, last_step=0))


async def accept_step(conn: AsyncConnection, user_id: str, step: int, *, enable: bool = False) -> bool:
    """Record `step` as used; False if it (or a later one) was used meanwhile."""
    values: dict[str, Any] = {"last_step": step}
    if enable:
        values["enabled"] = True
    result = await conn.execute(update(totp).where(totp.c.user_id == user_id, totp.c.last_step < step).values(**values))
    return result.rowcount == 1


async def delete_totp(conn: AsyncConnection, user_id: str) -> None:
    await conn.execute(delete(totp).where(totp.c.user_id == user_id))
