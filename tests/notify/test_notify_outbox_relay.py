"""The platform outbox relay on SQLite and PostgreSQL: order per aggregate, retries, dead letters, replicas."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.cli.main import main as cli_main
from finmesh.common.v1 import event_pb2
from finmesh.platform.messaging.outbox import enqueue, outbox_table
from finmesh.platform.messaging.outbox_admin import list_dead, outbox_stats, purge_delivered, redrive_dead
from finmesh.platform.messaging.relay import OutboxRelay, RelayPolicy, SinkUnavailable
from finmesh.platform.storage.db import create_engine, create_schema

FAST = dict(
    poll_interval_seconds=0.05, base_backoff_seconds=0.01, max_backoff_seconds=0.05, max_probe_interval_seconds=0.1
)


class Recorder:
    """A sink that remembers every call and can fail: the relay under test cannot tell it from notify."""

    def __init__(self) -> None:
        self.calls: list[event_pb2.Event] = []
        self.first_seen: list[tuple[str, int]] = []
        self.in_flight: set[str] = set()
        self.overlaps = 0
        self.fail = lambda event: None  # raises to fail
        self.delay = 0.0

    async def deliver(self, event: event_pb2.Event) -> None:
        if event.event_id in self.in_flight:
            self.overlaps += 1
        self.in_flight.add(event.event_id)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.fail(event)
            self.calls.append(event)
            if (event.aggregate_id, event.sequence) not in self.first_seen:
                self.first_seen.append((event.aggregate_id, event.sequence))
        finally:
            self.in_flight.discard(event.event_id)

    def order_per_aggregate(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for aggregate, sequence in self.first_seen:
            out[aggregate].append(sequence)
        return dict(out)


async def outbox_db(databases: Any) -> tuple[AsyncEngine, Any, str]:
    url = await databases.new("outbox")
    engine = create_engine(url)
    table = outbox_table(MetaData())
    await create_schema(engine, table.metadata)
    return engine, table, url


async def write(engine: AsyncEngine, table: Any, aggregates: list[str], per_aggregate: int) -> None:
    """Interleave events of several aggregates, as concurrent payments would."""
    for i in range(per_aggregate):
        for aggregate in aggregates:
            async with engine.begin() as conn:
                await enqueue(
                    conn,
                    table,
                    event_type="test.happened.v1",
                    aggregate_id=aggregate,
                    payload={"i": i, "amount_minor_units": 10**15 + i},
                )


async def until(check: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_flaky_sink_gets_every_event_in_order_per_aggregate(databases) -> None:
    """With a third of deliveries failing, every event still arrives, each aggregate in sequence order."""
    engine, table, _ = await outbox_db(databases)
    await write(engine, table, ["acc-a", "acc-b", "acc-c"], 8)
    sink, rng = Recorder(), random.Random(3)

    def flaky(event: event_pb2.Event) -> None:
        if rng.random() < 0.33:
            raise RuntimeError("consumer refused")

    sink.fail = flaky
    relay = OutboxRelay(engine, table, "test", sink.deliver, RelayPolicy(**FAST))
    relay.start()
    try:
        await until(lambda: _pending_is(relay, 0))
    finally:
        await relay.stop()
        await engine.dispose()
    assert sink.order_per_aggregate() == {agg: list(range(1, 9)) for agg in ("acc-a", "acc-b", "acc-c")}
    assert sink.calls[0].payload["amount_minor_units"] == str(10**15)  # money travels as exact text


async def _pending_is(relay: OutboxRelay, count: int) -> bool:
    return await relay.pending_count() == count


async def test_a_poison_event_goes_dead_without_blocking_its_aggregate_and_is_redriven(databases) -> None:
    """After max_attempts the event is parked; later events flow; the CLI lists and redrives it once fixed."""
    engine, table, url = await outbox_db(databases)
    await write(engine, table, ["acc-a"], 3)
    sink = Recorder()
    poison = {"seq": 2}

    def refuse_second(event: event_pb2.Event) -> None:
        if event.sequence == poison["seq"]:
            raise ValueError("consumer says: malformed")

    sink.fail = refuse_second
    relay = OutboxRelay(engine, table, "test", sink.deliver, RelayPolicy(max_attempts=3, **FAST))
    relay.start()
    try:
        await until(lambda: _pending_is(relay, 1))
        dead = await list_dead(engine, table)
        assert [(d.sequence, d.attempts) for d in dead] == [(2, 3)]
        assert "malformed" in dead[0].last_error
        assert sink.order_per_aggregate() == {"acc-a": [1, 3]}
        stats = await outbox_stats(engine, table)
        assert (stats.pending, stats.dead, stats.delivered) == (0, 1, 2)

        listed = await asyncio.to_thread(cli_main, ["outbox", "--database-url", url, "list"])
        assert listed == 0
        poison["seq"] = -1  # the operator fixed the consumer
        code = await asyncio.to_thread(cli_main, ["outbox", "--database-url", url, "redrive", dead[0].event_id])
        assert code == 0
        relay.wake()
        await until(lambda: _pending_is(relay, 0))
    finally:
        await relay.stop()
    assert sink.order_per_aggregate() == {"acc-a": [1, 3, 2]}
    assert await list_dead(engine, table) == []
    assert await redrive_dead(engine, table, [dead[0].event_id]) == 0  # nothing dead any more
    await engine.dispose()


async def test_an_unreachable_sink_costs_no_attempts_and_nothing_goes_dead(databases) -> None:
    """A consumer that is down is not the events' fault: they wait (with probes) instead of dying."""
    engine, table, _ = await outbox_db(databases)
    await write(engine, table, ["acc-a", "acc-b"], 3)
    sink = Recorder()
    down = {"yes": True}

    def maybe_down(event: event_pb2.Event) -> None:
        if down["yes"]:
            raise SinkUnavailable("notify UNAVAILABLE")

    sink.fail = maybe_down
    relay = OutboxRelay(engine, table, "test", sink.deliver, RelayPolicy(max_attempts=2, **FAST))
    relay.start()
    try:
        await asyncio.sleep(0.6)  # many probes' worth
        async with engine.connect() as conn:
            rows = (await conn.execute(select(table.c.attempts, table.c.dead))).all()
        assert rows and all(r.attempts == 0 and not r.dead for r in rows)
        down["yes"] = False
        await until(lambda: _pending_is(relay, 0))
    finally:
        await relay.stop()
        await engine.dispose()
    assert sink.order_per_aggregate() == {"acc-a": [1, 2, 3], "acc-b": [1, 2, 3]}


async def test_two_relay_replicas_never_send_an_event_twice_or_out_of_order(databases) -> None:
    """Leases keep replicas apart: each event is delivered once, each aggregate in order."""
    engine, table, url = await outbox_db(databases)
    await write(engine, table, [f"acc-{i}" for i in range(6)], 5)
    other_engine = create_engine(url)
    sink = Recorder()
    sink.delay = 0.005
    relays = [
        OutboxRelay(e, table, "test", sink.deliver, RelayPolicy(batch_size=7, **FAST)) for e in (engine, other_engine)
    ]
    for relay in relays:
        relay.start()
    try:
        await until(lambda: _pending_is(relays[0], 0))
    finally:
        for relay in relays:
            await relay.stop()
        await other_engine.dispose()
        await engine.dispose()
    assert len(sink.calls) == 30
    assert len({e.event_id for e in sink.calls}) == 30
    assert sink.overlaps == 0
    assert sink.order_per_aggregate() == {f"acc-{i}": [1, 2, 3, 4, 5] for i in range(6)}


@pytest.mark.parametrize("argv", [["stats"], ["redrive"], ["redrive", "--all"]])
async def test_cli_outbox_commands_exit_cleanly(sqlite_databases, argv: list[str]) -> None:
    """`finmesh outbox` answers on an empty outbox; redrive without ids is a usage error."""
    engine, _, url = await outbox_db(sqlite_databases)
    await engine.dispose()
    code = await asyncio.to_thread(cli_main, ["outbox", "--database-url", url, *argv])
    assert code == (2 if argv == ["redrive"] else 0)


async def test_purge_keeps_the_newest_event_of_each_aggregate_so_sequences_continue(databases) -> None:
    """Old delivered events can go; the last one per aggregate stays, so the next event gets the next number."""
    engine, table, _ = await outbox_db(databases)
    await write(engine, table, ["acc-a"], 3)
    sink = Recorder()
    relay = OutboxRelay(engine, table, "test", sink.deliver, RelayPolicy(**FAST))
    assert await relay.drain_once() == 3
    assert await purge_delivered(engine, table, timedelta(0)) == 2
    await write(engine, table, ["acc-a"], 1)
    assert await relay.drain_once() == 1
    await engine.dispose()
    assert sink.order_per_aggregate() == {"acc-a": [1, 2, 3, 4]}
