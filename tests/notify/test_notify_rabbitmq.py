"""Events over RabbitMQ (FINMESH_EVENTS_TRANSPORT=rabbitmq), payments -> broker -> notify, under broker faults.

Each test has a vhost of its own on the shared broker; outages are a TcpProxy in front of it (stopped: the
broker is gone and connections drop; started again: it is back), never the shared server itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from sqlalchemy import MetaData, func, select

from finmesh.cli.main import main as cli_main
from finmesh.common.v1 import event_pb2, money_pb2
from finmesh.notify.store.schema import notifications, received_events
from finmesh.notify.usecases.intake import EventIntake
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.messaging.outbox import outbox_table
from finmesh.platform.messaging.rabbitmq.publisher import RabbitEventSink
from finmesh.platform.observability.telemetry import inject_context
from finmesh.platform.storage.db import create_engine
from tests.inprocess import running_mesh
from tests.notify.conftest import eventually, running_notify
from tests.rabbitmq import Vhost
from tests.reliability.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]


def key() -> str:
    return uuid.uuid4().hex


async def rows(url: str, query: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(query)).all())
    finally:
        await engine.dispose()


async def count(url: str, table: Any) -> int:
    return int((await rows(url, select(func.count()).select_from(table)))[0][0])


class Payments:
    def __init__(self, stub: pb_grpc.PaymentsServiceStub) -> None:
        self.stub = stub

    async def wallet(self, owner: str, top_up: int = 0) -> str:
        reply = await self.stub.OpenAccount(
            pb.OpenAccountRequest(
                idempotency_key=key(), owner_id=owner, kind=pb.ACCOUNT_KIND_CUSTOMER_WALLET, currency_code="CNY"
            )
        )
        account = str(reply.account.account_id)
        if top_up:
            await self.stub.TopUp(
                pb.TopUpRequest(
                    idempotency_key=key(),
                    account_id=account,
                    channel="test_bank",
                    amount=money_pb2.Money(currency_code="CNY", minor_units=top_up),
                )
            )
        return account

    async def pay(self, payer: str, payee: str, n: int) -> None:
        for i in range(n):
            reply = await self.stub.CreatePayment(
                pb.CreatePaymentRequest(
                    idempotency_key=key(),
                    payer_account_id=payer,
                    payee_account_id=payee,
                    amount=money_pb2.Money(currency_code="CNY", minor_units=1_000 + i),
                    capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                )
            )
            assert reply.payment.status == pb.PAYMENT_STATUS_CAPTURED


async def test_broker_down_or_dropped_every_event_arrives_once_in_order(
    databases: Any, tmp_path: Path, rabbitmq: Vhost
) -> None:
    """With the broker gone, payments keep committing and events wait in the outbox (no attempt charged); when
    it returns, and across two connection drops while payments flow, notify takes every event exactly once,
    each account's in sequence order."""
    proxy = await TcpProxy(rabbitmq.port).start()
    try:
        async with running_mesh(databases, tmp_path, common=rabbitmq.settings(proxy.port)) as mesh:
            await asyncio.wait_for(mesh.services["notify"].app.events.ready.wait(), 15)
            payments = Payments(pb_grpc.PaymentsServiceStub(mesh.channel("payments")))
            relay = mesh.services["payments"].app.relay
            payee = await payments.wallet("payee")

            payers = [await payments.wallet(f"payer-{i}", top_up=100_000) for i in range(3)]

            async def bounce() -> None:  # connections dropped twice while payments flow
                for _ in range(2):
                    await asyncio.sleep(0.3)
                    await proxy.stop()
                    await asyncio.sleep(0.3)
                    await proxy.start()

            bouncing = asyncio.create_task(bounce())
            paid = 0

            async def keep_paying(payer: str) -> None:
                nonlocal paid
                while not bouncing.done():  # ~12 each at most: risk's velocity rule holds the 21st for review
                    await payments.pay(payer, payee, 1)
                    paid += 1
                    await asyncio.sleep(0.1)

            await asyncio.gather(*(keep_paying(p) for p in payers))
            sink, consumer = mesh.services["payments"].app.sink, mesh.services["notify"].app.events
            await eventually(relay.pending_count, lambda pending: pending == 0, timeout=20)
            connects = sink.connects

            await proxy.stop()  # the broker is gone: connections drop, new ones are refused
            await asyncio.gather(*(payments.pay(p, payee, 2) for p in payers))
            paid += 6
            await asyncio.sleep(0.5)  # the relay probes the absent broker meanwhile
            assert await relay.pending_count() == 6  # none published
            await proxy.start()  # back, on the same port

            outbox = outbox_table(MetaData())
            payments_url, notify_url = mesh.services["payments"].database_url, mesh.services["notify"].database_url
            await eventually(relay.pending_count, lambda pending: pending == 0, timeout=40)
            produced = await rows(
                payments_url,
                select(outbox.c.event_id, outbox.c.aggregate_id, outbox.c.sequence, outbox.c.dead, outbox.c.attempts),
            )
            await eventually(lambda: count(notify_url, received_events), lambda n: n >= len(produced), timeout=40)
            await asyncio.sleep(0.5)  # a late duplicate would show now
            received = await rows(notify_url, select(received_events).order_by(received_events.c.received_at))
            receipts = await rows(notify_url, select(notifications.c.event_id, notifications.c.template))
    finally:
        await proxy.stop()

    assert not any(r.dead for r in produced)
    assert all(r.attempts == 0 for r in produced)  # the broker being away cost no event an attempt
    assert sorted(r.event_id for r in received) == sorted(r.event_id for r in produced)  # all, each once
    arrival: dict[str, list[int]] = defaultdict(list)
    for r in received:
        arrival[r.aggregate_id].append(r.sequence)
    assert set(arrival) >= set(payers)
    for aggregate, sequences in arrival.items():
        assert sequences == list(range(1, len(sequences) + 1)), aggregate
    per_event = Counter(r.event_id for r in receipts)
    assert per_event and max(per_event.values()) <= 2  # payer and payee receipts, never doubled
    assert Counter(r.template for r in receipts)["payment_received"] == paid
    # The drops were real: both ends had to connect again.
    assert connects >= 2 and sink.connects > connects and consumer.sessions >= 2, (connects, consumer.sessions)


def event(aggregate: str, sequence: int = 1, **fields: Any) -> event_pb2.Event:
    made = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        source="payments",
        event_type="payments.test.happened.v1",
        aggregate_id=aggregate,
        sequence=sequence,
        **fields,
    )
    if "occurred_at" not in fields:
        made.occurred_at.GetCurrentTime()
    return made


class Outcomes:
    """What notify's intake said of each event it took (new or duplicate), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.said: list[tuple[str, bool]] = []
        original = EventIntake.deliver_batch

        async def recording(intake: EventIntake, events: Any) -> Any:
            outcomes = await original(intake, events)
            self.said += [(e.event_id, o.duplicate) for e, o in zip(events, outcomes, strict=True)]
            return outcomes

        monkeypatch.setattr(EventIntake, "deliver_batch", recording)


async def test_a_consumer_stopped_between_commit_and_ack_gets_the_message_again_and_applies_it_once(
    databases: Any, tmp_path: Path, rabbitmq: Vhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notify's consumer is cancelled after its transaction committed but before the ack: the broker delivers
    the message again to the next consumer, whose dedupe takes it as a duplicate; one receipt, one ack."""
    outcomes = Outcomes(monkeypatch)
    async with running_notify(databases, tmp_path, **rabbitmq.settings()) as notify:
        consumer = notify.app.events
        await asyncio.wait_for(consumer.ready.wait(), 15)
        handle, committed = consumer._handle, asyncio.Event()

        async def commit_then_hang(events: Any) -> Any:
            await handle(events)
            committed.set()
            await asyncio.Event().wait()  # never acknowledges: the stop below cancels it here

        consumer._handle = commit_then_hang
        sink = RabbitEventSink(rabbitmq.broker(), "payments")
        sent = event("account-1")
        assert (await sink.deliver_batch([sent]))[0].taken
        await asyncio.wait_for(committed.wait(), 15)
        await consumer.stop()
        assert consumer.acked == 0

        consumer._handle = handle
        consumer.start()
        await eventually(lambda: asyncio.sleep(0, consumer.acked), lambda acked: acked == 1, timeout=15)
        await sink.close()
        received = await rows(notify.database_url, select(received_events.c.event_id))
        depth = await rabbitmq.depth("finmesh.notify.0")

    assert outcomes.said == [(sent.event_id, False), (sent.event_id, True)]  # applied, then a duplicate
    assert [r.event_id for r in received] == [sent.event_id]
    assert depth == 0


async def test_poison_messages_go_to_the_dead_letters_and_are_listed_and_redriven(
    sqlite_databases: Any, tmp_path: Path, rabbitmq: Vhost, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """An event notify refuses goes to the dead letters at once with the reason; one whose handling fails goes
    there after FINMESH_EVENTS_MAX_DELIVERIES deliveries; other aggregates flow meanwhile. `finmesh outbox
    --broker` lists both and, once the cause is fixed, redrives them: the good one is applied once, the invalid
    one is refused again."""
    monkeypatch.setenv("FINMESH_RABBITMQ_URL", rabbitmq.url())
    settings = rabbitmq.settings(events_max_deliveries=2)
    broker_cli = ["outbox", "--consumer", "notify"]
    async with running_notify(sqlite_databases, tmp_path, **settings) as notify:
        consumer = notify.app.events
        await asyncio.wait_for(consumer.ready.wait(), 15)
        handle = consumer._handle
        invalid = event("account-1")
        invalid.occurred_at.seconds = 10**12  # past year 9999: notify refuses it
        failing, fine = event("account-2"), event("account-3")

        async def failing_on(events: Any) -> Any:
            if any(e.event_id == failing.event_id for e in events):
                raise RuntimeError("a bug in the handler")
            return await handle(events)

        consumer._handle = failing_on
        sink = RabbitEventSink(rabbitmq.broker(), "payments")
        assert all(o.taken for o in await sink.deliver_batch([invalid, failing, fine]))
        await eventually(lambda: rabbitmq.depth("finmesh.notify.dead"), lambda n: n == 2, timeout=20)
        received = [r.event_id for r in await rows(notify.database_url, select(received_events.c.event_id))]
        assert received == [fine.event_id]

        assert await asyncio.to_thread(cli_main, [*broker_cli, "list", "--broker"]) == 0
        listed = capsys.readouterr().out
        assert invalid.event_id in listed and "occurred_at: not a valid timestamp" in listed
        assert failing.event_id in listed and "broker: delivery_limit" in listed

        consumer._handle = handle  # the bug fixed
        assert await asyncio.to_thread(cli_main, [*broker_cli, "redrive", "--broker", "--all"]) == 0
        assert "redriven 2" in capsys.readouterr().out
        await eventually(
            lambda: rows(notify.database_url, select(received_events.c.event_id)),
            lambda found: {r.event_id for r in found} == {fine.event_id, failing.event_id},
            timeout=15,
        )
        await eventually(lambda: rabbitmq.depth("finmesh.notify.dead"), lambda n: n == 1, timeout=15)
        assert await asyncio.to_thread(cli_main, [*broker_cli, "list", "--broker"]) == 0
        assert invalid.event_id in capsys.readouterr().out  # refused again, with its reason
        await sink.close()
        received = await rows(notify.database_url, select(received_events.c.event_id))
    assert sorted(r.event_id for r in received) == sorted([fine.event_id, failing.event_id])  # each once


async def test_the_broker_hop_is_a_publish_and_a_process_span_in_the_producing_trace(
    sqlite_databases: Any, tmp_path: Path, rabbitmq: Vhost, spans: Any
) -> None:
    """The message carries the W3C context: `publish` (PRODUCER) continues the trace that wrote the event, and
    notify's `process` (CONSUMER) is its child and links it, with the messaging attributes."""
    async with running_notify(sqlite_databases, tmp_path, **rabbitmq.settings()) as notify:
        consumer = notify.app.events
        await asyncio.wait_for(consumer.ready.wait(), 15)
        sink = RabbitEventSink(rabbitmq.broker(), "payments")
        with trace.get_tracer("test").start_as_current_span("CreatePayment") as operation:
            sent = event("account-1", **inject_context())
        await sink.deliver_batch([sent])
        await eventually(lambda: asyncio.sleep(0, consumer.acked), lambda acked: acked == 1, timeout=15)
        await sink.close()
    finished = {s.name: s for s in spans.get_finished_spans()}
    publish, process = finished["publish finmesh.payments.events"], finished["process finmesh.payments.events"]
    trace_id = operation.get_span_context().trace_id
    assert publish.kind == trace.SpanKind.PRODUCER and process.kind == trace.SpanKind.CONSUMER
    assert publish.context.trace_id == process.context.trace_id == trace_id
    assert publish.parent.span_id == operation.get_span_context().span_id
    assert process.parent.span_id == publish.context.span_id
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]
    assert publish.attributes["messaging.system"] == process.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["messaging.operation.type"] == "send"
    assert process.attributes["messaging.operation.type"] == "process"
    assert publish.attributes["messaging.destination.name"] == "finmesh.payments.events"
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == "0.payments.test.happened.v1"
    assert publish.attributes["messaging.message.id"] == process.attributes["messaging.message.id"] == sent.event_id
