"""Per-payer serialisation and the devices each user was seen on."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.common import insert_ignoring_duplicates
from finmesh.risk.store.schema import known_devices, subjects


async def lock(conn: AsyncConnection, subject_key: str, now: datetime) -> None:
    """Hold the payer's row lock until the transaction ends.

    Two replicas assessing the same payer at once would otherwise both read
    the velocity count before either wrote, and both approve. The UPDATE
    takes the row lock on PostgreSQL; SQLite transactions here begin
    IMMEDIATE, which already serialises writers, so the row is skipped there.
    """
    if conn.dialect.name == "sqlite":
        return
    await insert_ignoring_duplicates(conn, subjects, subject_key=subject_key, touched_at=now)
    await conn.execute(update(subjects).where(subjects.c.subject_key == subject_key).values(touched_at=now))


async def device_history(conn: AsyncConnection, user_id: str, device_id: str) -> tuple[bool, bool]:
    """(this device is known for the user, the user has any known device), in one round trip."""
    d = known_devices.c
    query = select(func.count(), func.coalesce(func.sum(case((d.device_id == device_id, 1), else_=0)), 0)).where(
        d.user_id == user_id)
    total, this = (await conn.execute(query)).one()
    return bool(this), bool(total)


async def remember_device(conn: AsyncConnection, user_id: str, device_id: str, now: datetime) -> None:
    await insert_ignoring_duplicates(conn, known_devices, user_id=user_id, device_id=device_id, first_seen_at=now)


async def other_users_on_device(conn: AsyncConnection, device_id: str, user_id: str) -> int:
    query = select(func.count()).where(known_devices.c.device_id == device_id, known_devices.c.user_id != user_id)
    return int(await conn.scalar(query) or 0)
