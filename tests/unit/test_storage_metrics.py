"""Platform storage and messaging metrics, on SQLite and PostgreSQL: the outbox backlog the relay samples, the
connection pool's counts and waits, and the plans of the backlog statements on a big outbox."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.common.v1 import event_pb2
from finmesh.platform.messaging.outbox import enqueue, outbox_table
from finmesh.platform.messaging.outbox_metrics import OutboxSampler
from finmesh.platform.messaging.relay import OutboxRelay, RelayPolicy, SinkUnavailable
from finmesh.platform.storage.db import create_engine, create_schema
from tests import metrics

FAST = dict(
    poll_interval_seconds=0.05,
    base_backoff_seconds=0.01,
    max_backoff_seconds=0.05,
    max_probe_interval_seconds=0.1,
    metrics_sample_seconds=0.05,
)


class Switch:
    """A consumer that is down until switched on: the relay cannot tell it from notify being unreachable."""

    def __init__(self) -> None:
        self.up = False
        self.taken: list[str] = []

    async def deliver(self, event: event_pb2.Event) -> None:
        if not self.up:
            raise SinkUnavailable("consumer down")
        self.taken.append(event.event_id)


async def _outbox(databases: Any) -> tuple[AsyncEngine, Any]:
    engine = create_engine(await databases.new("outbox"))
    table = outbox_table(MetaData())
    await create_schema(engine, table.metadata)
    return engine, table


async def _write(engine: AsyncEngine, table: Any, count: int) -> None:
    async with engine.begin() as conn:
        for i in range(count):
            await enqueue(conn, table, event_type="test.happened.v1", aggregate_id=f"agg-{i % 3}", payload={"i": i})


async def _until(check: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_the_backlog_rises_while_the_consumer_is_down_and_falls_once_delivered(databases) -> None:
    """Each relay labels its gauges with its consumer (a name of its own here: the in-process services' relays
    share the process's gauges)."""
    engine, table = await _outbox(databases)
    consumer = f"test-{uuid.uuid4().hex[:8]}"
    sink = Switch()
    relay = OutboxRelay(engine, table, "test", sink.deliver, RelayPolicy(**FAST), consumer=consumer)
    relay.start()
    try:
        await _until(lambda: metrics.attribute_values("finmesh.outbox.backlog", "consumer") >= {consumer})
        assert metrics.value("finmesh.outbox.backlog", consumer=consumer) == 0
        assert metrics.value("finmesh.outbox.oldest_age", consumer=consumer) == 0
        await _write(engine, table, 5)
        relay.wake()
        await _until(lambda: metrics.value("finmesh.outbox.backlog", consumer=consumer) == 5)
        await asyncio.sleep(0.2)
        assert metrics.value("finmesh.outbox.oldest_age", consumer=consumer) > 0
        assert metrics.value("finmesh.outbox.parked", consumer=consumer) == 0
        assert sink.taken == []
        sink.up = True
        await _until(lambda: metrics.value("finmesh.outbox.backlog", consumer=consumer) == 0)
        assert len(sink.taken) == 5
        assert metrics.value("finmesh.outbox.oldest_age", consumer=consumer) == 0
    finally:
        await relay.stop()
        await engine.dispose()


async def test_parked_events_are_counted_apart_from_the_backlog(databases) -> None:
    engine, table = await _outbox(databases)
    consumer = f"test-{uuid.uuid4().hex[:8]}"
    try:
        await _write(engine, table, 4)
        async with engine.begin() as conn:
            await conn.execute(
                table.update().where(table.c.sequence == 1, table.c.aggregate_id == "agg-0").values(dead=True)
            )
            await conn.execute(
                table.update().where(table.c.aggregate_id == "agg-1").values(delivered_at=text("CURRENT_TIMESTAMP"))
            )
        async with engine.begin() as conn:
            await OutboxSampler(table, consumer).sample(conn)
        assert metrics.value("finmesh.outbox.parked", consumer=consumer) == 1
        assert metrics.value("finmesh.outbox.backlog", consumer=consumer) == 2  # agg-0's second, agg-2's
    finally:
        await engine.dispose()


async def test_the_backlog_statements_stay_on_the_undelivered_rows(databases) -> None:
    """The outbox keeps every delivered row: the sample must read the pending index, never the table."""
    engine, table = await _outbox(databases)
    sampler = OutboxSampler(table, "plans")
    try:
        async with engine.connect() as conn:
            for statement in (sampler._counts, sampler._oldest):
                sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                if databases.kind == "sqlite":
                    plan = " | ".join(row[-1] for row in await conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
                    assert (
                        "USING COVERING INDEX ix_outbox_pending" in plan or "USING INDEX ix_outbox_pending" in plan
                    ), plan
                    assert "SCAN outbox" not in plan, plan
                else:
                    await conn.execute(text("SET enable_seqscan = off"))
                    plan = " | ".join(row[0] for row in await conn.execute(text("EXPLAIN " + sql)))
                    assert "ix_outbox_pending" in plan and "Seq Scan" not in plan, plan
                    assert "Index Cond" in plan, plan  # a range of the index, not a walk of all of it
            await conn.rollback()
    finally:
        await engine.dispose()


async def test_the_pool_reports_a_used_connection_and_each_checkout_wait(databases) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    engine = create_engine(await databases.new("pool"), name=name)
    pool = {"db.client.connection.pool.name": name}
    waits = metrics.value("db.client.connection.wait_time", pool)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            assert metrics.value("db.client.connection.count", {**pool, "db.client.connection.state": "used"}) == 1
            assert metrics.value("db.client.connection.count", {**pool, "db.client.connection.state": "idle"}) == 0
        assert metrics.value("db.client.connection.count", {**pool, "db.client.connection.state": "used"}) == 0
        assert metrics.value("db.client.connection.count", {**pool, "db.client.connection.state": "idle"}) == 1
        assert metrics.value("db.client.connection.wait_time", pool) == waits + 1
        assert metrics.value("db.client.connection.pending_requests", pool) == 0
        assert metrics.attribute_values("db.client.connection.count", "db.client.connection.pool.name") >= {name}
    finally:
        await engine.dispose()
