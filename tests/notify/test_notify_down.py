"""Notify down while payments keep working: when it returns, every event arrives exactly once, in order.

On both events transports: with the gRPC relay the events wait in payments' outbox, with RabbitMQ in notify's
queue on the broker (the outbox hands them over at once).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from sqlalchemy import MetaData, select

from finmesh.common.v1 import money_pb2
from finmesh.notify.api.events_consumer import BINDINGS
from finmesh.notify.store.schema import notifications, received_events
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.messaging.outbox import outbox_table
from finmesh.platform.storage.db import create_engine
from tests.inprocess import running_mesh
from tests.notify.conftest import eventually, free_port, running_notify
from tests.rabbitmq import Vhost


def key() -> str:
    return uuid.uuid4().hex


async def rows(url: str, query) -> list:  # type: ignore[no-untyped-def]
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(query)).all())
    finally:
        await engine.dispose()


async def test_notify_down_then_back_every_event_once_in_order_per_account(
    databases, tmp_path: Path, events_transport: Vhost | None
) -> None:
    """Payments succeed with notify unreachable; once notify starts on its port the backlog drains exactly once."""
    port = free_port()
    transport = events_transport.settings() if events_transport else {}
    if events_transport:
        # Notify's queues exist from its first start in any deployment; this notify has not started yet.
        await events_transport.declare("notify", BINDINGS)
    async with running_mesh(
        databases, tmp_path, names=("risk", "payments"), notify_port=port, common=transport
    ) as mesh:
        stub = pb_grpc.PaymentsServiceStub(mesh.channel("payments"))

        async def wallet(owner: str) -> str:
            reply = await stub.OpenAccount(
                pb.OpenAccountRequest(
                    idempotency_key=key(), owner_id=owner, kind=pb.ACCOUNT_KIND_CUSTOMER_WALLET, currency_code="CNY"
                )
            )
            return reply.account.account_id

        payers = {f"payer-{i}": await wallet(f"payer-{i}") for i in range(3)}
        payee = await wallet("payee")
        for account in payers.values():
            await stub.TopUp(
                pb.TopUpRequest(
                    idempotency_key=key(),
                    account_id=account,
                    channel="test_bank",
                    amount=money_pb2.Money(currency_code="CNY", minor_units=100_000),
                )
            )

        async def pay_four(account: str) -> list[int]:
            statuses = []
            for n in range(4):
                reply = await stub.CreatePayment(
                    pb.CreatePaymentRequest(
                        idempotency_key=key(),
                        payer_account_id=account,
                        payee_account_id=payee,
                        amount=money_pb2.Money(currency_code="CNY", minor_units=1_000 + n),
                        capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                    )
                )
                statuses.append(reply.payment.status)
            return statuses

        results = await asyncio.gather(*(pay_four(a) for a in payers.values()))
        assert all(s == pb.PAYMENT_STATUS_CAPTURED for statuses in results for s in statuses)
        relay = mesh.services["payments"].app.relay
        await asyncio.sleep(0.5)  # the relay keeps probing an absent notify meanwhile
        if events_transport:
            backlog = await events_transport.depth("finmesh.notify.0")
        else:
            backlog = await relay.pending_count()
        assert backlog >= 15  # 3 top-ups + 12 payments, none delivered

        outbox = outbox_table(MetaData())
        async with running_notify(databases, tmp_path, port=port, issuer=mesh.issuer, **transport) as notify:
            await eventually(relay.pending_count, lambda pending: pending == 0, timeout=30)
            await eventually(
                lambda: rows(notify.database_url, select(received_events.c.event_id)),
                lambda got: len(got) >= backlog,
                timeout=30,
            )
            produced = await rows(
                mesh.services["payments"].database_url,
                select(outbox.c.event_id, outbox.c.aggregate_id, outbox.c.sequence, outbox.c.dead, outbox.c.attempts),
            )
            received = await rows(notify.database_url, select(received_events).order_by(received_events.c.received_at))
            receipts = await rows(
                notify.database_url, select(notifications.c.event_id, notifications.c.user_id, notifications.c.template)
            )

    assert not any(r.dead for r in produced)
    assert all(r.attempts == 0 for r in produced)  # notify being down cost no event an attempt
    assert sorted(r.event_id for r in received) == sorted(r.event_id for r in produced)  # all, each once
    arrival: dict[str, list[int]] = defaultdict(list)
    for r in received:
        arrival[r.aggregate_id].append(r.sequence)
    assert set(arrival) >= set(payers.values())
    for aggregate, sequences in arrival.items():
        assert sequences == sorted(sequences) == list(range(1, len(sequences) + 1)), aggregate
    per_event = Counter(r.event_id for r in receipts)
    assert per_event and max(per_event.values()) <= 2  # payer and payee receipts, never doubled
    templates = Counter((r.user_id, r.template) for r in receipts)
    assert templates[("payee", "payment_received")] == 12
    assert all(templates[(user, "payment_sent")] == 4 and templates[(user, "topup_succeeded")] == 1 for user in payers)
