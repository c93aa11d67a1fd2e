"""Outbox backlog gauges, per consumer: events not yet delivered, the oldest one's age, and parked events.

- finmesh.outbox.backlog {consumer}: undelivered events still being tried
- finmesh.outbox.oldest_age {consumer} (s): age of the oldest of them, 0 when there is none
- finmesh.outbox.parked {consumer}: undelivered events parked after too many failures (dead letters)

The outbox keeps delivered rows (delivered_at set) and only grows, so both statements stay on the undelivered
rows through ix_outbox_pending (delivered_at, dead, id): the count reads that index's undelivered range, the
oldest event is its first entry. Their cost follows the backlog, not the table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, func, select

from finmesh.platform.observability.metrics import meter
from finmesh.platform.storage.db import aware

_meter = meter("finmesh.platform.messaging")
_backlog = _meter.create_gauge("finmesh.outbox.backlog", unit="{event}", description="Undelivered outbox events")
_oldest_age = _meter.create_gauge(
    "finmesh.outbox.oldest_age", unit="s", description="Age of the oldest undelivered outbox event (0: none)"
)
_parked = _meter.create_gauge(
    "finmesh.outbox.parked", unit="{event}", description="Outbox events parked after too many failed deliveries"
)


class OutboxSampler:
    """Reads one outbox's backlog for `consumer` and sets the gauges under its name.

    Notify's backlog is on the outbox rows themselves; any other consumer's on its rows in `deliveries`
    (finmesh.platform.messaging.fanout), read through ix_outbox_deliveries_pending the same way."""

    def __init__(self, table: Table, consumer: str, deliveries: Table | None = None) -> None:
        t = self._table = table
        self._attributes = {"consumer": consumer}
        if deliveries is None:
            undelivered = t.c.delivered_at.is_(None)
            self._counts = select(t.c.dead, func.count()).where(undelivered).group_by(t.c.dead)
            self._oldest = select(t.c.occurred_at).where(undelivered, t.c.dead.is_(False)).order_by(t.c.id).limit(1)
            return
        d = deliveries
        undelivered_d = (d.c.consumer == consumer, d.c.delivered_at.is_(None))
        self._counts = select(d.c.dead, func.count()).where(*undelivered_d).group_by(d.c.dead)
        self._oldest = (
            select(t.c.occurred_at)
            .select_from(d.join(t, t.c.id == d.c.outbox_id))
            .where(*undelivered_d, d.c.dead.is_(False))
            .order_by(d.c.outbox_id)
            .limit(1)
        )

    async def sample(self, conn: Any) -> None:
        """Set the gauges from `conn` (an AsyncConnection, or a write thread's connection)."""
        counts = {bool(dead): int(count) for dead, count in (await conn.execute(self._counts)).all()}
        oldest = (await conn.execute(self._oldest)).first()
        age = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - aware(oldest.occurred_at)).total_seconds())
        _backlog.set(counts.get(False, 0), self._attributes)
        _parked.set(counts.get(True, 0), self._attributes)
        _oldest_age.set(age, self._attributes)
