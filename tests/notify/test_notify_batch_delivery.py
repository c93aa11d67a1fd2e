"""Outbox relays deliver a round's events in one DeliverEvents call; notify takes them in one transaction.

Real notify servers on SQLite and PostgreSQL: per-event results (new, duplicate, refused, deferred), order per
aggregate across a refusal, an older notify without DeliverEvents, and redelivery after a relay crash."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from sqlalchemy import MetaData, func, select, update

from finmesh.common.v1 import event_pb2
from finmesh.notify.store.schema import notifications, received_events
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.config import ServiceSettings
from finmesh.platform.messaging.event_sink import NOTIFY_IDEMPOTENT_METHODS, NotifyEventSink
from finmesh.platform.messaging.outbox import enqueue, outbox_table
from finmesh.platform.messaging.relay import BatchOutcome, OutboxRelay, RelayPolicy
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.guard import field_violations_of
from finmesh.platform.storage.db import create_engine, create_schema
from tests.auth import channel as acting_channel
from tests.notify.conftest import Notify, eventually, running_notify

FAST = RelayPolicy(
    poll_interval_seconds=0.05, base_backoff_seconds=0.01, max_backoff_seconds=0.05, max_probe_interval_seconds=0.1
)
NOTIFY_SERVICE = "finmesh.notify.v1.NotifyService"


def captured(account: str, sequence: int, payee: str = "payee") -> event_pb2.Event:
    """A payment event as payments' relay sends it: a receipt for the payer and one for the payee."""
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        source="payments",
        event_type="payments.payment.captured.v1",
        aggregate_id=account,
        sequence=sequence,
        user_id="payer",
    )
    event.payload.update(_payment(f"p-{account}-{sequence}", payee))
    return event


def _payment(payment_id: str, payee: str) -> dict[str, str]:
    return {
        "payment_id": payment_id,
        "status": "CAPTURED",
        "amount_minor_units": "12345",
        "currency_code": "CNY",
        "payer_user_id": "payer",
        "payee_user_id": payee,
    }


async def test_a_batch_answers_each_event_in_order(databases, tmp_path: Path) -> None:
    """New, delivered before, repeated in the batch, invalid, behind an invalid one: each gets its own result."""
    async with running_notify(databases, tmp_path) as notify:
        earlier = captured("acc-0", 1)
        await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=earlier))
        new, bad, behind_bad, other = (
            captured("acc-a", 1),
            captured("acc-b", 1),
            captured("acc-b", 2),
            captured("acc-c", 1),
        )
        bad.event_type = ""
        batch = [new, earlier, new, bad, behind_bad, other]
        reply = await notify.stub.DeliverEvents(pb.DeliverEventsRequest(events=batch))
        payee = await notify.stub.ListNotifications(pb.ListNotificationsRequest(user_id="payee"))
        counts = await _counts(notify)

    assert [r.event_id for r in reply.results] == [e.event_id for e in batch]
    assert [pb.EventOutcome.Name(r.outcome) for r in reply.results] == [
        "EVENT_OUTCOME_DELIVERED",
        "EVENT_OUTCOME_DUPLICATE",
        "EVENT_OUTCOME_DUPLICATE",
        "EVENT_OUTCOME_REFUSED",
        "EVENT_OUTCOME_DEFERRED",
        "EVENT_OUTCOME_DELIVERED",
    ]
    assert [v.field for v in reply.results[3].field_violations] == ["events[3].event_type"]
    assert len(reply.results[0].notification_ids) == 2  # payer and payee receipts
    assert not reply.results[1].notification_ids and not reply.results[2].notification_ids
    # earlier, new and other: one receipt each for the payee; the refused and deferred events left nothing.
    assert sorted(n.event_id for n in payee.notifications) == sorted([earlier.event_id, new.event_id, other.event_id])
    assert counts == {"received": 3, "notifications": 6}


async def test_an_event_stamped_outside_the_timestamp_range_is_refused_by_name(databases, tmp_path: Path) -> None:
    """A producer's broken timestamp is that event's INVALID field, never the batch's INTERNAL."""
    async with running_notify(databases, tmp_path) as notify:
        broken, fine = captured("acc-t", 1), captured("acc-u", 1)
        broken.occurred_at.seconds, broken.occurred_at.nanos = 1, -2_147_483_648
        reply = await notify.stub.DeliverEvents(pb.DeliverEventsRequest(events=[broken, fine]))

    assert [pb.EventOutcome.Name(r.outcome) for r in reply.results] == [
        "EVENT_OUTCOME_REFUSED",
        "EVENT_OUTCOME_DELIVERED",
    ]
    assert [v.field for v in reply.results[0].field_violations] == ["events[0].occurred_at"]


async def test_a_batch_as_a_whole_is_bounded(databases, tmp_path: Path) -> None:
    """No events, or more than 500: INVALID_ARGUMENT naming `events`, nothing recorded."""
    async with running_notify(databases, tmp_path) as notify:
        for events in ([], [captured("acc-a", n) for n in range(1, 502)]):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await notify.stub.DeliverEvents(pb.DeliverEventsRequest(events=events))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations_of(refused.value) == ["events"]
        counts = await _counts(notify)
    assert counts == {"received": 0, "notifications": 0}


async def test_racing_batches_record_each_event_once(databases, tmp_path: Path) -> None:
    """Relays (or a relay and its own retry) sending overlapping batches at once: one delivery per event."""
    async with running_notify(databases, tmp_path) as notify:
        events = [captured(f"acc-{n % 4}", n // 4 + 1) for n in range(24)]
        batches = [events, events[:12], events[6:], list(reversed(events[:3])) + events[3:9]]
        replies = await asyncio.gather(
            *(notify.stub.DeliverEvents(pb.DeliverEventsRequest(events=batch)) for batch in batches for _ in range(2))
        )
        counts = await _counts(notify)
    delivered = Counter(
        r.event_id for reply in replies for r in reply.results if r.outcome == pb.EVENT_OUTCOME_DELIVERED
    )
    assert delivered == Counter({e.event_id: 1 for e in events})
    assert all(
        r.outcome in (pb.EVENT_OUTCOME_DELIVERED, pb.EVENT_OUTCOME_DUPLICATE)
        for reply in replies
        for r in reply.results
    )
    assert counts == {"received": 24, "notifications": 48}


class Spoiling:
    """Notify's own sink, except that events named in `spoil` go out malformed, once each."""

    def __init__(self, sink: NotifyEventSink) -> None:
        self.sink = sink
        self.spoil: set[tuple[str, int]] = set()
        self.batch_sizes: list[int] = []

    async def deliver_batch(self, events: Sequence[event_pb2.Event]) -> Sequence[BatchOutcome]:
        sent = []
        for event in events:
            if (event.aggregate_id, event.sequence) in self.spoil:
                self.spoil.discard((event.aggregate_id, event.sequence))
                event = event_pb2.Event(
                    event_id=event.event_id,
                    source=event.source,
                    event_type="",
                    aggregate_id=event.aggregate_id,
                    sequence=event.sequence,
                )
            sent.append(event)
        self.batch_sizes.append(len(sent))
        return await self.sink.deliver_batch(sent)


async def test_a_refused_event_holds_back_its_aggregate_only(databases, tmp_path: Path) -> None:
    """One round, one call: acc-a's second event is refused, so acc-a stops there (its failure recorded, its
    later events sent again after it); acc-b's events are delivered. At notify both arrive in order, once."""
    engine, table = await _outbox(databases)
    await _write(engine, table, ["acc-a", "acc-b"], 5)
    async with running_notify(databases, tmp_path) as notify:
        channel = acting_channel(notify.target, notify.issuer)
        sink = NotifyEventSink(channel)
        spoiling = Spoiling(sink)
        spoiling.spoil.add(("acc-a", 2))
        relay = OutboxRelay(engine, table, "payments", sink.deliver, FAST, deliver_batch=spoiling.deliver_batch)
        relay.start()
        try:
            await eventually(relay.pending_count, lambda pending: pending == 0)
        finally:
            await relay.stop()
            await channel.close()
        arrival = await _arrival(notify)
        counts = await _counts(notify)
        async with engine.connect() as conn:
            attempts = {
                (r.aggregate_id, r.sequence): (r.attempts, r.last_error) for r in await conn.execute(select(table))
            }
    await engine.dispose()

    assert spoiling.batch_sizes[0] == 10  # the whole round in one call
    assert arrival == {"acc-a": [1, 2, 3, 4, 5], "acc-b": [1, 2, 3, 4, 5]}
    assert counts == {"received": 10, "notifications": 20}
    assert attempts[("acc-a", 2)][0] == 1 and "events[1].event_type" in attempts[("acc-a", 2)][1]
    assert all(attempt == 0 for key, (attempt, _) in attempts.items() if key != ("acc-a", 2))


class OldNotify:
    """A notify from before DeliverEvents, as the wire sees it: DeliverEvent (answered by the real notify
    behind it) and nothing else. Counts what producers asked of it."""

    def __init__(self, notify: Notify) -> None:
        self.channel = acting_channel(notify.target, notify.issuer)
        self.asked: Counter[str] = Counter()
        self.server = grpc.aio.server()

    async def start(self) -> str:
        from finmesh.notify.v1 import notify_service_pb2_grpc as pb_grpc

        real = pb_grpc.NotifyServiceStub(self.channel)

        async def deliver_event(request: pb.DeliverEventRequest, context: Any) -> pb.DeliverEventResponse:
            return await real.DeliverEvent(request)

        methods = grpc.method_handlers_generic_handler(
            NOTIFY_SERVICE,
            {
                "DeliverEvent": grpc.unary_unary_rpc_method_handler(
                    deliver_event,
                    request_deserializer=pb.DeliverEventRequest.FromString,
                    response_serializer=pb.DeliverEventResponse.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((_Counting(self.asked), methods))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.server.stop(0)
        await self.channel.close()


class _Counting(grpc.GenericRpcHandler):
    def __init__(self, asked: Counter[str]) -> None:
        self.asked = asked

    def service(self, handler_call_details: Any) -> None:
        self.asked[handler_call_details.method.rsplit("/", 1)[-1]] += 1
        return None  # the next handler answers, or gRPC says UNIMPLEMENTED


async def test_an_older_notify_gets_every_event_once_one_call_each(databases, tmp_path: Path) -> None:
    """Rolling out producers before notify: DeliverEvents is UNIMPLEMENTED, so the relay sends one event per
    call and does not ask again for a while; every event still arrives once, in order per aggregate."""
    engine, table = await _outbox(databases)
    await _write(engine, table, ["acc-a", "acc-b", "acc-c"], 4)
    async with running_notify(databases, tmp_path) as notify:
        old = OldNotify(notify)
        channel = grpc.aio.insecure_channel(await old.start())
        relay = OutboxRelay(engine, table, "payments", NotifyEventSink(channel).deliver, FAST)
        relay.start()
        try:
            await eventually(relay.pending_count, lambda pending: pending == 0)
            await _write(engine, table, ["acc-a", "acc-b", "acc-c"], 2)  # a later round, still one per call
            await eventually(relay.pending_count, lambda pending: pending == 0)
        finally:
            await relay.stop()
            await channel.close()
            await old.stop()
        arrival = await _arrival(notify)
        counts = await _counts(notify)
    await engine.dispose()

    assert old.asked["DeliverEvents"] == 1
    assert old.asked["DeliverEvent"] == 18  # each event once: nothing lost, nothing sent twice
    assert arrival == {account: [1, 2, 3, 4, 5, 6] for account in ("acc-a", "acc-b", "acc-c")}
    assert counts == {"received": 18, "notifications": 36}


async def test_a_round_sent_again_after_a_relay_crash_is_all_duplicates(databases, tmp_path: Path) -> None:
    """A relay that dies after notify took its batch but before marking it leaves the events pending: the next
    relay sends them again and notify records nothing twice."""
    engine, table = await _outbox(databases)
    await _write(engine, table, ["acc-a", "acc-b"], 3)
    async with running_notify(databases, tmp_path) as notify:
        channel = acting_channel(notify.target, notify.issuer)
        for _ in range(2):
            relay = OutboxRelay(engine, table, "payments", NotifyEventSink(channel).deliver, FAST)
            relay.start()
            try:
                await eventually(relay.pending_count, lambda pending: pending == 0)
            finally:
                await relay.stop()
            counts = await _counts(notify)
            assert counts == {"received": 6, "notifications": 12}
            async with engine.begin() as conn:  # the crash: delivered, never marked, and its lease ran out
                await conn.execute(update(table).values(delivered_at=None, next_attempt_at=datetime.now(UTC)))
        await channel.close()
        arrival = await _arrival(notify)
    await engine.dispose()
    assert arrival == {"acc-a": [1, 2, 3], "acc-b": [1, 2, 3]}


# -- helpers ----------------------------------------------------------------------------------


async def _outbox(databases: Any) -> tuple[Any, Any]:
    engine = create_engine(await databases.new("outbox"))
    table = outbox_table(MetaData())
    await create_schema(engine, table.metadata)
    return engine, table


async def _write(engine: Any, table: Any, accounts: list[str], per_account: int) -> None:
    """Interleaved payments of several accounts, each event in its own transaction as payments writes them."""
    for _ in range(per_account):
        for account in accounts:
            async with engine.begin() as conn:
                await enqueue(
                    conn,
                    table,
                    event_type="payments.payment.captured.v1",
                    aggregate_id=account,
                    user_id="payer",
                    payload=_payment(f"p-{uuid.uuid4().hex[:8]}", "payee"),
                )


async def _counts(notify: Notify) -> dict[str, int]:
    engine = create_engine(notify.database_url)
    try:
        async with engine.connect() as conn:
            received = await conn.scalar(select(func.count()).select_from(received_events))
            sent = await conn.scalar(select(func.count()).select_from(notifications))
    finally:
        await engine.dispose()
    return {"received": int(received or 0), "notifications": int(sent or 0)}


async def _arrival(notify: Notify) -> dict[str, list[int]]:
    """Each aggregate's sequences in the order notify received them."""
    engine = create_engine(notify.database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(received_events.c.aggregate_id, received_events.c.sequence).order_by(
                        received_events.c.received_at
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    arrival: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        arrival[row.aggregate_id].append(row.sequence)
    return dict(arrival)


async def test_one_producer_span_per_batch_links_every_event_trace(databases, tmp_path: Path, spans) -> None:
    """The batch call has one PRODUCER span counting its events and linking the span that wrote each; notify's
    server span hangs under it, and each event's receipts carry the writer's trace for the delivery worker."""
    engine, table = await _outbox(databases)
    tracer = trace.get_tracer("test")
    writers = {}
    for n in range(4):
        with tracer.start_as_current_span(f"payment {n}") as writer:
            async with engine.begin() as conn:
                event_id = await enqueue(
                    conn,
                    table,
                    event_type="payments.payment.captured.v1",
                    aggregate_id=f"acc-{n % 2}",
                    user_id="payer",
                    payload=_payment(f"p-{n}", "payee"),
                )
        writers[event_id] = writer.get_span_context()
    async with running_notify(databases, tmp_path) as notify:
        # Payments' own channel (client spans carry the context), with its service token from the issuer.
        settings = ServiceSettings(service_name="payments", data_dir=tmp_path, **notify.issuer.settings())
        channel = open_channel(notify.target, settings, idempotent_methods=NOTIFY_IDEMPOTENT_METHODS)
        relay = OutboxRelay(engine, table, "payments", NotifyEventSink(channel).deliver, FAST)
        relay.start()
        try:
            await eventually(relay.pending_count, lambda pending: pending == 0)
        finally:
            await relay.stop()
            await channel.close()
        receipts = await _receipts(notify)
    await engine.dispose()

    [batch] = [s for s in spans.get_finished_spans() if s.name == "outbox batch send"]
    assert batch.kind == trace.SpanKind.PRODUCER and batch.attributes["messaging.batch.message_count"] == 4
    assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == {
        (w.trace_id, w.span_id) for w in writers.values()
    }
    [server] = [
        s
        for s in spans.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER and s.name.endswith("NotifyService/DeliverEvents")
    ]
    assert server.context.trace_id == batch.context.trace_id
    assert {
        event_id: {traceparent.split("-")[1] for traceparent in parents} for event_id, parents in receipts.items()
    } == {event_id: {f"{w.trace_id:032x}"} for event_id, w in writers.items()}


async def _receipts(notify: Notify) -> dict[str, set[str]]:
    """Each event's receipts' trace parents."""
    engine = create_engine(notify.database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(notifications.c.event_id, notifications.c.traceparent))).all()
    finally:
        await engine.dispose()
    out: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        out[row.event_id].add(row.traceparent)
    return dict(out)
