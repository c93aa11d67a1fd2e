"""Recorded password-login attempts, and the history the throttle judges an attempt by."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.domain.login_throttle import COMPLETED, COUNTED, History, address_failures
from finmesh.identity.store.schema import login_attempts as t
from finmesh.platform.storage.db import aware


async def record(conn: AsyncConnection, *, subject: str, address: str, outcome: str, at: datetime) -> int:
    result = await conn.execute(insert(t).values(subject=subject, address=address, outcome=outcome, at=at))
    return int(result.inserted_primary_key[0])  # type: ignore[index]  # typed Optional; an INSERT always has one


async def settle(conn: AsyncConnection, attempt_id: int, outcome: str, at: datetime) -> None:
    """The outcome of an attempt recorded (as FAILED) before its password was verified, and when it was
    answered: delays run from the answer, however long the password check took."""
    await conn.execute(update(t).where(t.c.id == attempt_id).values(outcome=outcome, at=at))


async def history(
    conn: AsyncConnection, *, subject: str, address: str, now: datetime, window: timedelta, known_for: timedelta
) -> History:
    since = now - window
    # Bounded: the throttle lets one address fail only so often within the window.
    rows = await conn.execute(
        select(t.c.outcome, t.c.at)
        .where(t.c.subject == subject, t.c.address == address, t.c.at >= since)
        .order_by(t.c.at, t.c.id)
    )
    failures, last = address_failures((outcome, aware(at)) for outcome, at in rows)
    account = await conn.scalar(
        select(func.count()).select_from(t).where(t.c.subject == subject, t.c.at >= since, t.c.outcome.in_(COUNTED))
    )
    known = await conn.scalar(
        select(
            exists().where(
                t.c.subject == subject, t.c.address == address, t.c.outcome == COMPLETED, t.c.at >= now - known_for
            )
        )
    )
    return History(failures, last, int(account or 0), bool(known))
