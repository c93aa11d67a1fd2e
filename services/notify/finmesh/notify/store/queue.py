"""Every message notify records (the external ones are the send queue, claimed with a lease) and the dead letters."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.notify.store.schema import dead_letters, notifications
from finmesh.platform.errors import FailedPrecondition, NotFound

QUEUED, SENT, FAILED, DEAD = "QUEUED", "SENT", "FAILED", "DEAD_LETTERED"
# The last_error of a message withdrawn because identity erased its recipient (finmesh.notify.store.erasure).
USER_ERASED = "USER_ERASED"

n = notifications


async def add(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """New messages (finmesh.notify.usecases.compose makes the rows), in the caller's transaction."""
    if rows:
        await conn.execute(insert(n), rows)


async def claim(engine: AsyncEngine, category: str, now: datetime, limit: int, lease_seconds: float) -> list[Any]:
    """Take up to `limit` due messages of one lane; other workers skip them until the lease runs out."""
    async with engine.begin() as conn:
        rows = list(
            (
                await conn.execute(
                    select(n)
                    .where(n.c.status == QUEUED, n.c.category == category, n.c.next_attempt_at <= now)
                    .order_by(n.c.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
        if rows:
            await conn.execute(
                update(n)
                .where(n.c.notification_id.in_([r.notification_id for r in rows]))
                .values(next_attempt_at=now + timedelta(seconds=lease_seconds))
            )
    return rows


async def release(engine: AsyncEngine, notification_ids: list[str], now: datetime) -> None:
    """Give claimed messages back (on shutdown) so another worker need not wait out the lease."""
    if not notification_ids:
        return
    async with engine.begin() as conn:
        await conn.execute(
            update(n)
            .where(n.c.notification_id.in_(notification_ids), n.c.status == QUEUED, n.c.next_attempt_at > now)
            .values(next_attempt_at=now)
        )


async def next_due(engine: AsyncEngine, category: str) -> datetime | None:
    async with engine.connect() as conn:
        return await conn.scalar(
            select(n.c.next_attempt_at)
            .where(n.c.status == QUEUED, n.c.category == category)
            .order_by(n.c.next_attempt_at)
            .limit(1)
        )


async def waiting_by_lane(conn: AsyncConnection) -> dict[str, tuple[int, datetime | None]]:
    """Per lane: the messages waiting to be sent (due, retrying or claimed) and when the oldest was created.

    Reads the queued rows only, through ix_notifications_queue (status first): counting them costs what the
    backlog is, never the whole history of sent messages."""
    query = select(n.c.category, func.count(), func.min(n.c.created_at)).where(n.c.status == QUEUED)
    return {row[0]: (int(row[1]), row[2]) for row in await conn.execute(query.group_by(n.c.category))}


async def dead_lettered_by_channel(conn: AsyncConnection) -> dict[str, int]:
    """Per channel: messages dead-lettered and not redriven since. A dead letter whose recipient was erased
    meanwhile is left out: it can never be redriven (its message is FAILED), so nothing is waiting on it."""
    query = select(n.c.channel, func.count()).where(n.c.status == DEAD).group_by(n.c.channel)
    return {row[0]: int(row[1]) for row in await conn.execute(query)}


async def _set(engine: AsyncEngine, notification_id: str, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(n).where(n.c.notification_id == notification_id, n.c.status == QUEUED).values(**values)
        )


async def mark_sent(engine: AsyncEngine, notification_id: str, attempts: int, now: datetime) -> None:
    await _set(
        engine, notification_id, status=SENT, attempts=attempts, sent_at=now, next_attempt_at=None, last_error=""
    )


async def schedule_retry(engine: AsyncEngine, notification_id: str, attempts: int, at: datetime, error: str) -> None:
    await _set(engine, notification_id, attempts=attempts, next_attempt_at=at, last_error=error[:300])


async def defer(engine: AsyncEngine, notification_id: str, until: datetime) -> None:
    await _set(engine, notification_id, next_attempt_at=until)


async def mark_failed(engine: AsyncEngine, notification_id: str, reason: str) -> None:
    """Given up on purpose (e.g. the user opted out meanwhile): nothing to redrive."""
    await _set(engine, notification_id, status=FAILED, next_attempt_at=None, last_error=reason[:300])


async def dead_letter(
    engine: AsyncEngine, notification_id: str, channel: str, attempts: int, error: str, now: datetime
) -> str:
    """Park the message and record a dead letter, in one transaction."""
    dead_letter_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        result = await conn.execute(
            update(n)
            .where(n.c.notification_id == notification_id, n.c.status == QUEUED)
            .values(status=DEAD, attempts=attempts, next_attempt_at=None, last_error=error[:300])
        )
        if result.rowcount:
            await conn.execute(
                insert(dead_letters).values(
                    dead_letter_id=dead_letter_id,
                    notification_id=notification_id,
                    channel=channel,
                    attempts=attempts,
                    last_error=error[:300],
                    created_at=now,
                    redriven=False,
                )
            )
    return dead_letter_id


async def list_dead_letters(conn: AsyncConnection, after_seq: int, limit: int) -> list[Any]:
    d = dead_letters
    return list((await conn.execute(select(d).where(d.c.seq > after_seq).order_by(d.c.seq).limit(limit))).all())


async def redrive(conn: AsyncConnection, dead_letter_id: str, now: datetime) -> Any:
    """Queue the dead letter's message again with a fresh retry budget; return the notification row."""
    d = dead_letters
    letter = (await conn.execute(select(d).where(d.c.dead_letter_id == dead_letter_id))).first()
    if letter is None:
        raise NotFound("DEAD_LETTER_NOT_FOUND", "dead letter not found")
    if letter.redriven:
        raise FailedPrecondition("INVALID_STATE", "this dead letter was already redriven")
    message = (
        await conn.execute(select(n.c.status, n.c.last_error).where(n.c.notification_id == letter.notification_id))
    ).one()
    if message.status == FAILED and message.last_error == USER_ERASED:
        raise FailedPrecondition(USER_ERASED, "the recipient was erased; the message is gone")
    claimed = await conn.execute(
        update(d)
        .where(d.c.dead_letter_id == dead_letter_id, d.c.redriven.is_(False))
        .values(redriven=True, redriven_at=now)
    )
    if not claimed.rowcount:
        raise FailedPrecondition("INVALID_STATE", "this dead letter was already redriven")
    await conn.execute(
        update(n)
        .where(n.c.notification_id == letter.notification_id, n.c.status == DEAD)
        .values(status=QUEUED, attempts=0, next_attempt_at=now, last_error="")
    )
    return (await conn.execute(select(n).where(n.c.notification_id == letter.notification_id))).one()


async def get(conn: AsyncConnection, notification_id: str) -> Any:
    return (await conn.execute(select(n).where(n.c.notification_id == notification_id))).first()


async def list_for_user(conn: AsyncConnection, user_id: str, after: str, limit: int) -> list[Any]:
    query = select(n).where(n.c.user_id == user_id)
    if after:
        query = query.where(n.c.notification_id > after)
    return list((await conn.execute(query.order_by(n.c.notification_id).limit(limit))).all())
