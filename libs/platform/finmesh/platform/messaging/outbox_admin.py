"""The operator's tools for an outbox (`finmesh outbox`): counts, dead events, redrive and purge.

An event the relay parked as dead (it failed RelayPolicy.max_attempts times)
waits here until an operator fixed the cause and redrives it. Each consumer has
its own delivery state (finmesh.platform.messaging.fanout): notify's on the
outbox row, any other's in outbox_deliveries; `consumer` says whose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.messaging.fanout import ROW_CONSUMER, fanout_tables_of
from finmesh.platform.storage.db import aware


def _deliveries(table: Table, consumer: str) -> Table | None:
    """None for notify (its state is the outbox row); else the consumer's delivery rows' table."""
    if consumer == ROW_CONSUMER:
        return None
    tables = fanout_tables_of(table)
    if tables is None:
        raise ValueError(f"this outbox has no delivery rows for consumer {consumer!r}")
    return tables[0]


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


async def list_dead(
    engine: AsyncEngine, table: Table, *, limit: int = 100, after_id: int = 0, consumer: str = ROW_CONSUMER
) -> list[DeadEvent]:
    """Dead (parked) events in id order, `limit` at a time after `after_id` (for paging)."""
    t, d = table, _deliveries(table, consumer)
    if d is None:
        query = select(t).where(t.c.dead.is_(True), t.c.delivered_at.is_(None), t.c.id > after_id)
    else:
        columns = [c for c in t.c if c.name not in ("attempts", "last_error")] + [d.c.attempts, d.c.last_error]
        query = (
            select(*columns)
            .select_from(d.join(t, t.c.id == d.c.outbox_id))
            .where(d.c.consumer == consumer, d.c.dead.is_(True), d.c.delivered_at.is_(None), t.c.id > after_id)
        )
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(t.c.id).limit(limit))).all()
        await conn.rollback()
    return [
        DeadEvent(
            r.id, r.event_id, r.event_type, r.aggregate_id, r.sequence, r.attempts, r.last_error, aware(r.occurred_at)
        )
        for r in rows
    ]


async def redrive_dead(
    engine: AsyncEngine, table: Table, event_ids: Sequence[str] | None = None, *, consumer: str = ROW_CONSUMER
) -> int:
    """Put dead events (the given ones, or all when None) back in line; return how many.

    Attempts restart at zero: the operator fixed the cause, so the event gets a
    full retry budget again. A redriven event may reach the consumer after
    later events of its aggregate: order is kept among live events only.
    """
    t, d = table, _deliveries(table, consumer)
    if d is None:
        query = update(t).where(t.c.dead.is_(True), t.c.delivered_at.is_(None))
    else:
        query = update(d).where(d.c.consumer == consumer, d.c.dead.is_(True), d.c.delivered_at.is_(None))
    if event_ids is not None:
        if not event_ids:
            return 0
        named = t.c.event_id.in_(list(event_ids))
        query = query.where(named if d is None else d.c.outbox_id.in_(select(t.c.id).where(named)))
    async with engine.begin() as conn:
        result = await conn.execute(query.values(dead=False, attempts=0, next_attempt_at=datetime.now(UTC)))
    return int(result.rowcount or 0)


async def outbox_stats(engine: AsyncEngine, table: Table, *, consumer: str = ROW_CONSUMER) -> OutboxStats:
    t, d = table, _deliveries(table, consumer)
    s = t if d is None else d
    mine = () if d is None else (d.c.consumer == consumer,)
    source = t if d is None else d.join(t, t.c.id == d.c.outbox_id)
    async with engine.connect() as conn:
        pending = await conn.scalar(
            select(func.count()).select_from(s).where(*mine, s.c.delivered_at.is_(None), s.c.dead.is_(False))
        )
        dead = await conn.scalar(
            select(func.count()).select_from(s).where(*mine, s.c.delivered_at.is_(None), s.c.dead.is_(True))
        )
        delivered = await conn.scalar(select(func.count()).select_from(s).where(*mine, s.c.delivered_at.is_not(None)))
        oldest = await conn.scalar(
            select(func.min(t.c.occurred_at))
            .select_from(source)
            .where(*mine, s.c.delivered_at.is_(None), s.c.dead.is_(False))
        )
        await conn.rollback()
    return OutboxStats(int(pending or 0), int(dead or 0), int(delivered or 0), aware(oldest) if oldest else None)


async def purge_delivered(engine: AsyncEngine, table: Table, older_than: timedelta) -> int:
    """Delete delivered events older than `older_than` (keeps the newest per aggregate for sequencing).

    Delivered means to every consumer: an event another consumer has not taken yet, or has not even looked
    at (above its cursor), stays, and the delivery rows of the events purged go with them."""
    t = table
    cutoff = datetime.now(UTC) - older_than
    newest = select(func.max(t.c.id)).group_by(t.c.aggregate_id)
    conditions = [t.c.delivered_at.is_not(None), t.c.delivered_at < cutoff, t.c.id.not_in(newest)]
    fanned = fanout_tables_of(t)
    async with engine.begin() as conn:
        if fanned is not None:
            d, c = fanned
            conditions.append(
                ~exists().where(d.c.outbox_id == t.c.id, d.c.delivered_at.is_(None)),
            )
            looked_at = await conn.scalar(select(func.min(c.c.last_id)))
            if looked_at is not None:
                conditions.append(t.c.id <= looked_at)
            purged = select(t.c.id).where(*conditions)
            await conn.execute(delete(d).where(d.c.outbox_id.in_(purged)))
        result = await conn.execute(delete(t).where(*conditions))
    return int(result.rowcount or 0)
