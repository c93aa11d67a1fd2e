"""TOTP enrolments and failed-login counters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.store.schema import login_throttle, totp


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
    result = await conn.execute(update(totp).where(totp.c.user_id == user_id, totp.c.last_step < step)
                                .values(**values))
    return result.rowcount == 1


async def delete_totp(conn: AsyncConnection, user_id: str) -> None:
    await conn.execute(delete(totp).where(totp.c.user_id == user_id))


async def locked_until(conn: AsyncConnection, user_id: str) -> datetime | None:
    row = (await conn.execute(select(login_throttle).where(login_throttle.c.user_id == user_id))).first()
    return None if row is None else row.locked_until


async def record_failure(conn: AsyncConnection, user_id: str, *, max_failures: int, lock_until: datetime) -> None:
    row = (await conn.execute(select(login_throttle).where(login_throttle.c.user_id == user_id))).first()
    failures = (row.failures if row is not None else 0) + 1
    locked = lock_until if failures >= max_failures else None
    if row is None:
        await conn.execute(insert(login_throttle).values(user_id=user_id, failures=failures, locked_until=locked))
    else:
        # A lock starts a new run of failures once it ends.
        await conn.execute(update(login_throttle).where(login_throttle.c.user_id == user_id)
                           .values(failures=0 if locked else failures, locked_until=locked or row.locked_until))


async def clear_failures(conn: AsyncConnection, user_id: str) -> None:
    await conn.execute(delete(login_throttle).where(login_throttle.c.user_id == user_id))
