"""Erasure: identity erased a user, so notify forgets them (finmesh.notify.store.erasure says what that destroys
and what it keeps) and never sends them anything again."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.notify.domain.events import IncomingEvent, flat_payload
from finmesh.notify.store import erasure as store
from finmesh.notify.store.queue import USER_ERASED
from finmesh.platform.observability.logs import get_logger

# Each line keeps the logger of the component it happens in (the intake, the send worker): filters key on it.
_intake_log = get_logger("finmesh.notify.intake")
_worker_log = get_logger("finmesh.notify.worker")


async def forget(conn: AsyncConnection, event: IncomingEvent, now: datetime) -> None:
    """In the intake's transaction that records identity.user.erased.v1."""
    user_id = event.user_id or flat_payload(event.data).get("user_id", "")
    if not user_id:
        _intake_log.error("erasure_without_user", event_id=event.event_id)
        return
    forgotten = await store.forget(conn, user_id, event.event_id, now)
    _intake_log.info(
        "user_forgotten",
        event_id=event.event_id,
        cancelled=forgotten.cancelled,
        messages=forgotten.messages,
        complaints=forgotten.complaints,
    )


async def withdrawn_at_send(engine: AsyncEngine, row: Any) -> bool:
    """True when the message's recipient was erased: it is withdrawn, not sent. The erasure cancels queued
    messages; this catches one accepted while the erasure committed."""
    async with engine.connect() as conn:
        if not await store.is_erased(conn, row.user_id):
            return False
    async with engine.begin() as conn:
        await store.withdraw(conn, row.notification_id)
    _worker_log.info("notification_withdrawn", notification_id=row.notification_id, reason=USER_ERASED)
    return True
