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
from sqlalchemy import MetaData, func, select

from finmesh.common.v1 import money_pb2
from finmesh.notify.store.schema import notifications, received_events
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.messaging.outbox import outbox_table
from finmesh.platform.storage.db import create_engine
from tests.inprocess import running_mesh
from tests.notify.conftest import eventually
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
