"""Per-consumer delivery (finmesh.platform.messaging.fanout), on SQLite and PostgreSQL: each consumer's relay
keeps its own state, so one consumer down holds back no other; each gets its types, once, in order per
aggregate; the cursor waits at an id not yet committed and steps over one that never will be."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import MetaData, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.common.v1 import event_pb2
from finmesh.platform.messaging.fanout import FanOut, advance, fanout_tables
from finmesh.platform.messaging.outbox import enqueue, outbox_table
from finmesh.platform.messaging.outbox_admin import purge_delivered
from finmesh.platform.messaging.relay import OutboxRelay, RelayPolicy, SinkUnavailable
from finmesh.platform.storage.db import create_engine, create_schema
from tests.unit.test_storage_metrics import FAST, _until

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class Sink:
    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.taken: list[tuple[str, str, int]] = []

    async def deliver(self, event: event_pb2.Event) -> None:
        if not self.up:
            raise SinkUnavailable("consumer down")
        self.taken.append((event.event_type, event.aggregate_id, event.sequence))


async def _outbox(databases: Any) -> tuple[AsyncEngine, Any, Any, Any]:
    engine = create_engine(await databases.new("outbox"))
    metadata = MetaData()
    table = outbox_table(metadata)
    deliveries, cursors = fanout_tables(metadata)
    await create_schema(engine, metadata)
    return engine, table, deliveries, cursors


def test_the_cursor_stops_at_a_recent_gap_and_steps_over_an_old_one() -> None:
    """Ids seen in a row move the cursor; a missing id stops it while the row after it is recent (its
    transaction may still commit), and no longer once that row is older than the gap horizon."""
    row = lambda i, age: SimpleNamespace(id=i, occurred_at=NOW - timedelta(seconds=age))  # noqa: E731
    deadline = NOW - timedelta(seconds=60)
    assert advance(0, [row(1, 1), row(2, 1), row(3, 1)], deadline) == 3
    assert advance(0, [row(1, 1), row(3, 1), row(4, 1)], deadline) == 1
    assert advance(0, [row(1, 120), row(3, 120), row(5, 1)], deadline) == 3
    assert advance(7, [], deadline) == 7


async def test_a_consumer_down_holds_back_no_other_and_gets_its_events_once_in_order_when_back(
    databases, tmp_path
) -> None:
    """Notify (state on the outbox row) gets every event while audit (its own rows, `a.*` only) is down and
    charged no attempts; back, audit gets each of its events once, in order per aggregate."""
    engine, table, deliveries, cursors = await _outbox(databases)
    notify, audit = Sink(), Sink(up=False)
    policy = RelayPolicy(**FAST)
    relays = [
        OutboxRelay(engine, table, "test", notify.deliver, policy),
        OutboxRelay(
            engine,
            table,
            "test",
            audit.deliver,
            policy,
            fan_out=FanOut(table, deliveries, cursors, "audit", ["a.*"]),
        ),
    ]
    for relay in relays:
        relay.start()
    try:
        async with engine.begin() as conn:
            for i in range(30):
                kind = "a.one.v1" if i % 3 else "b.other.v1"
                await enqueue(conn, table, event_type=kind, aggregate_id=f"agg-{i % 4}", payload={"i": i})
        await _until(lambda: len(notify.taken) == 30)
        for _ in range(200):  # audit's relay copies its rows at its next probe, down or not
            async with engine.connect() as conn:
                waiting = (await conn.execute(select(deliveries))).all()
            if len(waiting) == 20:
                break
            await asyncio.sleep(0.02)
        assert len(waiting) == 20 and all(r.delivered_at is None and r.attempts == 0 for r in waiting), waiting
        audit.up = True
        await _until(lambda: len(audit.taken) == 20)
        assert sorted(audit.taken) == sorted(set(audit.taken)) and {t for t, _, _ in audit.taken} == {"a.one.v1"}
        for aggregate in {a for _, a, _ in audit.taken}:
            sequences = [s for _, a, s in audit.taken if a == aggregate]
            assert sequences == sorted(sequences), (aggregate, sequences)
        assert len(notify.taken) == 30
        # The sink has the events before the relay's transaction marks them delivered: wait for that commit.
        for _ in range(250):
            if await relays[1].pending_count() == 0:
                break
            await asyncio.sleep(0.02)
        assert await relays[1].pending_count() == 0
    finally:
        for relay in relays:
            await relay.stop()
        await engine.dispose()


async def test_the_fan_out_waits_for_an_id_committed_late_and_purge_keeps_what_a_consumer_lacks(
    databases, tmp_path
) -> None:
    """An outbox id written after higher ones (as PostgreSQL commits allow) is still copied once it appears,
    the cursor waiting before it meanwhile; purge keeps events a consumer has not taken."""
    engine, table, deliveries, cursors = await _outbox(databases)
    fan_out = FanOut(table, deliveries, cursors, "audit")

    def row(i: int, at: datetime) -> dict[str, Any]:
        return {
            "id": i,
            "event_id": f"e{i}",
            "event_type": "a.one.v1",
            "aggregate_id": "agg",
            "sequence": i,
            "user_id": "",
            "payload": {},
            "traceparent": "",
            "tracestate": "",
            "occurred_at": at,
            "delivered_at": at,
            "attempts": 0,
            "next_attempt_at": at,
            "last_error": "",
            "dead": False,
        }

    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(table), [row(1, now), row(3, now)])
            assert await fan_out.step(conn) == 2
            assert await conn.scalar(select(cursors.c.last_id)) == 1  # id 2 may still commit
        async with engine.begin() as conn:
            await conn.execute(insert(table), [row(2, now)])
            assert await fan_out.step(conn) == 1  # the late one; 3 is not copied twice
            assert await conn.scalar(select(cursors.c.last_id)) == 3
        async with engine.begin() as conn:
            copied = sorted((await conn.execute(select(deliveries.c.outbox_id))).scalars())
        assert copied == [1, 2, 3]
        # Delivered to notify, not yet to audit: nothing may be purged. Once audit has them, all but the
        # aggregate's newest go, with their delivery rows.
        assert await purge_delivered(engine, table, timedelta(seconds=-60)) == 0
        async with engine.begin() as conn:
            await conn.execute(deliveries.update().values(delivered_at=now))
        assert await purge_delivered(engine, table, timedelta(seconds=-60)) == 2
        async with engine.begin() as conn:
            assert list((await conn.execute(select(deliveries.c.outbox_id))).scalars()) == [3]
    finally:
        await engine.dispose()
