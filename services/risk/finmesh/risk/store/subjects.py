"""Per-payer serialisation and the devices each user was seen on."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.common import insert_ignoring_duplicates, insert_ignoring_duplicates_many
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


async def lock_many(conn: AsyncConnection, subject_keys: Iterable[str], now: datetime) -> None:
    """lock() for a batch of payers in one statement.

    The upsert takes the row locks in key order, the same order in every
    replica, so two replicas' batches that share payers wait for each other
    instead of deadlocking.
    """
    if conn.dialect.name == "sqlite":
        return
    keys = sorted(set(subject_keys))
    if not keys:
        return
    # executemany runs the rows in list order (asyncpg sends them as one multi-row statement).
    await conn.execute(_LOCK, [{"subject_key": k, "touched_at": now} for k in keys])


_upsert = pg_insert(subjects)
_LOCK = _upsert.on_conflict_do_update(
    index_elements=[subjects.c.subject_key], set_={"touched_at": _upsert.excluded.touched_at}
)


async def remember_devices(conn: AsyncConnection, pairs: Iterable[tuple[str, str]], now: datetime) -> None:
    """remember_device() for a batch of (user, device) pairs in one statement."""
    rows = [{"user_id": u, "device_id": d, "first_seen_at": now} for u, d in sorted(set(pairs))]
    await insert_ignoring_duplicates_many(conn, known_devices, rows)


async def remember_device(conn: AsyncConnection, user_id: str, device_id: str, now: datetime) -> None:
    await insert_ignoring_duplicates(conn, known_devices, user_id=user_id, device_id=device_id, first_seen_at=now)


async def other_users_on_device(conn: AsyncConnection, device_id: str, user_id: str) -> int:
    query = select(func.count()).where(known_devices.c.device_id == device_id, known_devices.c.user_id != user_id)
    return int(await conn.scalar(query) or 0)
