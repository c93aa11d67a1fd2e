"""Forgetting an erased user: what notify holds that identifies the person is destroyed, in one transaction.

Notify seals with one service key, not a key per user, so erasure cannot be a
crypto-shred: the sealed values themselves are overwritten (b"" marks an
erased sealed value; readers show it as empty). What stays is ids, states
and times: a complaint's clocks, a message's status, the consent log (the
evidence that consent was asked for, which holds no contact data), and
webhook deliveries, which carry the mesh's events to subscribed systems
rather than messages to the person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.store.queue import DEAD, FAILED, QUEUED, USER_ERASED
from finmesh.notify.store.schema import complaint_events, complaints, consents, erased_users, notifications, profiles
from finmesh.platform.errors import FailedPrecondition

ERASED = b""  # an overwritten sealed value
_PERSONAL_CHANNELS = ("INBOX", "SMS", "EMAIL")


@dataclass(frozen=True)
class Forgotten:
    cancelled: int  # queued or dead-lettered messages that will now never be sent
    messages: int  # messages whose address, subject and body were overwritten
    complaints: int


async def is_erased(conn: AsyncConnection, user_id: str) -> bool:
    return await conn.scalar(select(erased_users.c.user_id).where(erased_users.c.user_id == user_id)) is not None


async def refuse_if_erased(conn: AsyncConnection, user_id: str) -> None:
    """Identity erased this user: notify neither sends to them nor stores anything new about them."""
    if await is_erased(conn, user_id):
        raise FailedPrecondition(USER_ERASED, "this user was erased")


async def erased_among(conn: AsyncConnection, user_ids: set[str]) -> set[str]:
    if not user_ids:
        return set()
    rows = await conn.scalars(select(erased_users.c.user_id).where(erased_users.c.user_id.in_(user_ids)))
    return set(rows.all())


async def forget(conn: AsyncConnection, user_id: str, event_id: str, now: datetime) -> Forgotten:
    """Mark the user erased and overwrite their data. Safe to repeat: a second run finds nothing left."""
    if not await is_erased(conn, user_id):
        await conn.execute(insert(erased_users).values(user_id=user_id, event_id=event_id, erased_at=now))
    n = notifications.c
    mine = (n.user_id == user_id, n.channel.in_(_PERSONAL_CHANNELS))
    # Dead letters too, so a redrive cannot bring a message to an erased person back.
    cancelled = await conn.execute(
        update(notifications)
        .where(*mine, n.status.in_((QUEUED, DEAD)))
        .values(status=FAILED, next_attempt_at=None, last_error=USER_ERASED)
    )
    scrubbed = await conn.execute(
        update(notifications)
        .where(*mine, n.body_sealed != ERASED)
        .values(address_sealed=None, subject_sealed=None, body_sealed=ERASED)
    )
    await conn.execute(delete(profiles).where(profiles.c.user_id == user_id))
    await conn.execute(delete(consents).where(consents.c.user_id == user_id))
    ids = list((await conn.scalars(select(complaints.c.complaint_id).where(complaints.c.user_id == user_id))).all())
    if ids:
        await conn.execute(
            update(complaints)
            .where(complaints.c.complaint_id.in_(ids))
            .values(subject_sealed=ERASED, body_sealed=ERASED)
        )
        await conn.execute(
            update(complaint_events).where(complaint_events.c.complaint_id.in_(ids)).values(note_sealed=None)
        )
    return Forgotten(cancelled.rowcount, scrubbed.rowcount, len(ids))


async def withdraw(conn: AsyncConnection, notification_id: str) -> None:
    """One queued message found to be for an erased user at send time (it raced the erasure): never send it,
    and overwrite what it holds."""
    await conn.execute(
        update(notifications)
        .where(notifications.c.notification_id == notification_id, notifications.c.status == QUEUED)
        .values(
            status=FAILED,
            next_attempt_at=None,
            last_error=USER_ERASED,
            address_sealed=None,
            subject_sealed=None,
            body_sealed=ERASED,
        )
    )
