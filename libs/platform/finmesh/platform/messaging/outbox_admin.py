"""The operator's tools for an outbox (`finmesh outbox`): counts, dead events, redrive and purge.

An event the relay parked as dead (it failed RelayPolicy.max_attempts times)
waits here until an operator fixed the cause and redrives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.storage.db import aware


@dataclass(frozen=True)
class DeadEvent:
    id: int
    event_id: str
    event_type: str
    aggregate_id: str
    sequence: int
    attempts: int
    last_error: str
    occurred_at: datetime


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    dead: int
    delivered: int
    oldest_pending_at: datetime | None


async def list_dead(engine: AsyncEngine, table: Table, *, limit: int = 100, after_id: int = 0) -> list[DeadEvent]:
    """Dead (parked) events in id order, `limit` at a time after `after_id` (for paging)."""
    t = table
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(t)
                .where(t.c.dead.is_(True), t.c.delivered_at.is_(None), t.c.id > after_id)
                .order_by(t.c.id)
                .limit(limit)
            )
        ).all()
        await conn.rollback()
    return [
        DeadEvent(
            r.id, r.event_id, r.event_type, r.aggregate_id, r.sequence, r.attempts, r.last_error, aware(r.occurred_at)
        )
        for r in rows
    ]


async def redrive_dead(engine: AsyncEngine, table: Table, event_ids: Sequence[str] | None = None) -> int:
    """Put dead events (the given ones, or all when None) back in line; return how many.

    Attempts restart at zero: the operator fixed the cause, so the event gets a
    full retry budget again. A redriven event may reach the consumer after
    later events of its aggregate: order is kept among live events only.
    """
    t = table
    query = update(t).where(t.c.dead.is_(True), t.c.delivered_at.is_(None))
    if event_ids is not None:
        if not event_ids:
            return 0
        query = query.where(t.c.event_id.in_(list(event_ids)))
    async with engine.begin() as conn:
        result = await conn.execute(query.values(dead=False, attempts=0, next_attempt_at=datetime.now(UTC)))
    return int(result.rowcount or 0)


async def outbox_stats(engine: AsyncEngine, table: Table) -> OutboxStats:
    t = table
    async with engine.connect() as conn:
        pending = await conn.scalar(select(func.count()).where(t.c.delivered_at.is_(None), t.c.dead.is_(False)))
        dead = await conn.scalar(select(func.count()).where(t.c.delivered_at.is_(None), t.c.dead.is_(True)))
        delivered = await conn.scalar(select(func.count()).where(t.c.delivered_at.is_not(None)))
        oldest = await conn.scalar(
            select(func.min(t.c.occurred_at)).where(t.c.delivered_at.is_(None), t.c.dead.is_(False))
        )
        await conn.rollback()
    return OutboxStats(int(pending or 0), int(dead or 0), int(delivered or 0), aware(oldest) if oldest else None)


async def purge_delivered(engine: AsyncEngine, table: Table, older_than: timedelta) -> int:
    """Delete delivered events older than `older_than` (keeps the newest per aggregate for sequencing)."""
    t = table
    cutoff = datetime.now(UTC) - older_than
    newest = select(func.max(t.c.id)).group_by(t.c.aggregate_id)
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(t).where(t.c.delivered_at.is_not(None), t.c.delivered_at < cutoff, t.c.id.not_in(newest))
        )
    return int(result.rowcount or 0)
