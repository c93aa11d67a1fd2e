"""Fan-out: each consumer besides notify keeps its own delivery state per event, copied lazily from the outbox.

The outbox row's own delivery columns (delivered_at, attempts, next_attempt_at, dead) are notify's: notify
was every producer's only consumer, and the previous release still relays from them during a rollout. Every
other consumer (FINMESH_EVENTS_CONSUMERS, finmesh.platform.messaging.consumers) gets a row per event in
`outbox_deliveries`, with the same columns, and its own relay works on those rows exactly as notify's works
on the outbox: claims, leases, order per aggregate, backoff, dead letters. So one consumer down or slow holds
back nobody else, and each still gets every event once, in order per aggregate.

Producers write only the outbox row, as before (payments' ledger writer inserts its rows in bulk, an older
release writes none of this): the consumer's relay copies the rows it takes into outbox_deliveries, walking
the outbox by id from its cursor (`outbox_cursors`). On PostgreSQL ids are drawn before commit, so a lower id
may commit after a higher one: the cursor stops at the first missing id and the walk rescans from there (the
rows after it are copied meanwhile; the copy is idempotent), until the id turns up or is older than
`gap_seconds` (a rolled-back insert, whose id never comes). Within an aggregate ids follow sequence order
(an event is written under its aggregate's lock), so a late id never reorders an aggregate. On SQLite writers
take turns and ids never go missing.

A new consumer's cursor starts at 0: it gets every event the outbox still holds (purge_delivered keeps
undelivered rows and each aggregate's newest), so risk learns the users identity verified before it
subscribed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from finmesh.platform.storage.db import aware

# The consumer whose delivery state is the outbox row itself.
ROW_CONSUMER = "notify"


def fanout_tables(metadata: MetaData) -> tuple[Table, Table]:
    """(outbox_deliveries, outbox_cursors): the delivery state of every consumer but notify."""
    deliveries = Table(
        "outbox_deliveries",
        metadata,
        Column("consumer", String(32), primary_key=True),
        Column("outbox_id", BigInteger, primary_key=True),
        # Copied from the outbox row, so the head check reads this table alone.
        Column("aggregate_id", String(64), nullable=False),
        Column("sequence", BigInteger, nullable=False),
        Column("delivered_at", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer, nullable=False, default=0),
        # Doubles as the claim lease, as on the outbox row.
        Column("next_attempt_at", DateTime(timezone=True), nullable=False),
        Column("last_error", String(500), nullable=False, default=""),
        Column("dead", Boolean, nullable=False, default=False),
        Index("ix_outbox_deliveries_pending", "consumer", "delivered_at", "dead", "outbox_id"),
        Index("ix_outbox_deliveries_aggregate_pending", "consumer", "aggregate_id", "delivered_at", "dead", "sequence"),
    )
    cursors = Table(
        "outbox_cursors",
        metadata,
        Column("consumer", String(32), primary_key=True),
        # Every outbox id at or below this was looked at (copied, or not of the consumer's types).
        Column("last_id", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    return deliveries, cursors


def fanout_tables_of(outbox: Table) -> tuple[Table, Table] | None:
    """The fan-out tables beside `outbox` in its service's schema, or None (a schema without them)."""
    tables = outbox.metadata.tables
    if "outbox_deliveries" in tables and "outbox_cursors" in tables:
        return tables["outbox_deliveries"], tables["outbox_cursors"]
    return None


def type_matcher(patterns: Sequence[str]) -> Any:
    """A predicate on event types: no patterns take every type; `identity.user.*` a prefix; else exact."""
    if not patterns or "*" in patterns:
        return lambda event_type: True
    exact = frozenset(p for p in patterns if "*" not in p)
    wild = tuple(p for p in patterns if "*" in p)
    return lambda event_type: event_type in exact or any(fnmatch.fnmatchcase(event_type, p) for p in wild)


@dataclass(frozen=True)
class FanOutPolicy:
    # Outbox rows looked at per step (a rescan behind a missing id reads them again).
    window: int = 2000
    # A missing id older than this is taken for a rolled-back insert and stepped over. It must outlast any
    # transaction that writes events (they are short; the database's own timeouts end them well before).
    gap_seconds: float = 60.0


class FanOut:
    """Copies the consumer's new outbox rows into outbox_deliveries and moves its cursor."""

    def __init__(
        self, outbox: Table, deliveries: Table, cursors: Table, consumer: str, event_types: Sequence[str] = ()
    ) -> None:
        self.consumer = consumer
        self._takes = type_matcher(event_types)
        self._policy = FanOutPolicy()
        t, d, c = outbox, deliveries, cursors
        self.deliveries = d
        self._start = {
            name: dialect.insert(c).on_conflict_do_nothing(index_elements=[c.c.consumer])
            for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
        }
        # FOR UPDATE: replicas of a producer take turns on a consumer's cursor (SQLite serialises writers anyway).
        self._cursor = select(c.c.last_id).where(c.c.consumer == consumer).with_for_update()
        self._rows = (
            select(t.c.id, t.c.event_type, t.c.aggregate_id, t.c.sequence, t.c.occurred_at)
            .where(t.c.id > bindparam("after"))
            .order_by(t.c.id)
            .limit(self._policy.window)
        )
        self._copied = select(d.c.outbox_id).where(d.c.consumer == consumer)
        self._advance = update(c).where(c.c.consumer == consumer)

    def with_policy(self, policy: FanOutPolicy) -> FanOut:
        self._policy = policy
        self._rows = self._rows.limit(policy.window)
        return self

    async def step(self, conn: Any) -> int:
        """In the caller's write transaction: copy what is new; return how many rows were copied."""
        now = datetime.now(UTC)
        await conn.execute(self._start[conn.dialect.name].values(consumer=self.consumer, last_id=0, updated_at=now))
        cursor = int(await conn.scalar(self._cursor) or 0)
        rows = (await conn.execute(self._rows, {"after": cursor})).all()
        if not rows:
            return 0
        wanted = [r for r in rows if self._takes(r.event_type)]
        copied = 0
        if wanted:
            ids = [r.id for r in wanted]
            have = set((await conn.execute(self._copied.where(self.deliveries.c.outbox_id.in_(ids)))).scalars())
            new = [
                {
                    "consumer": self.consumer,
                    "outbox_id": r.id,
                    "aggregate_id": r.aggregate_id,
                    "sequence": r.sequence,
                    "delivered_at": None,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "last_error": "",
                    "dead": False,
                }
                for r in wanted
                if r.id not in have
            ]
            if new:
                await conn.execute(insert(self.deliveries), new)
                copied = len(new)
        last = advance(cursor, rows, now - timedelta(seconds=self._policy.gap_seconds))
        if last != cursor:
            await conn.execute(self._advance.values(last_id=last, updated_at=now))
        return copied


def advance(cursor: int, rows: Sequence[Any], gap_deadline: datetime) -> int:
    """The new cursor after reading `rows` (id order, all above `cursor`): past every id seen up to the first
    missing one, unless the row after that gap was written before `gap_deadline` (the gap's transaction,
    older still, is over: its id will not come)."""
    expected = cursor + 1
    for row in rows:
        if row.id != expected and aware(row.occurred_at) >= gap_deadline:
            break
        cursor = row.id
        expected = row.id + 1
    return cursor
