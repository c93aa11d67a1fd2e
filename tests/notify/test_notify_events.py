"""Event intake: dedupe by event id, risk alerts to operators, bad events refused by field."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from finmesh.common.v1 import event_pb2
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.rpc.guard import field_violations_of
from tests.notify.conftest import OPERATOR_EMAIL, running_notify


def risk_alert(level: str = "CRITICAL") -> event_pb2.Event:
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        source="risk",
        event_type="risk.alert.raised.v1",
        aggregate_id="alert-1",
        sequence=1,
        user_id="u-9",
    )
    event.payload.update(
        {
            "alert_id": "alert-1",
            "level": level,
            "user_id": "u-9",
            "account_id": "acc-9",
            "payment_id": "pay-9",
            "reasons": ["VELOCITY_USER", "AMOUNT_OVER_LIMIT"],
        }
    )
    return event


async def test_risk_alert_reaches_the_operators_once_however_often_it_is_delivered(
    databases, tmp_path: Path, smtp
) -> None:
    """risk.alert.raised.v1 becomes an operator e-mail and a console record; redelivery sends nothing more."""
    async with running_notify(databases, tmp_path, smtp=smtp) as notify:
        event = risk_alert()
        first = await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=event))
        assert not first.duplicate and len(first.notification_ids) == 2
        again = await asyncio.gather(*(notify.stub.DeliverEvent(pb.DeliverEventRequest(event=event)) for _ in range(3)))
        assert all(r.duplicate and not r.notification_ids for r in again)
        [mail] = await smtp.wait_for(1)
        console = await notify.stub.ListNotifications(pb.ListNotificationsRequest(user_id="operators"))
        await asyncio.sleep(0.3)
    assert mail["To"] == OPERATOR_EMAIL
    assert "CRITICAL" in mail["Subject"] and "alert-1" in mail["Subject"]
    assert "VELOCITY_USER, AMOUNT_OVER_LIMIT" in mail.get_content()
    assert sorted(pb.Channel.Name(n.channel) for n in console.notifications) == ["CHANNEL_EMAIL", "CHANNEL_INBOX"]
    assert len(smtp.messages) == 1


async def test_concurrent_redeliveries_record_one_set_of_receipts(databases, tmp_path: Path) -> None:
    """Ten relays racing with the same payment event: one set of receipts, nine duplicates."""
    async with running_notify(databases, tmp_path) as notify:
        event = event_pb2.Event(
            event_id=str(uuid.uuid4()),
            source="payments",
            event_type="payments.payment.captured.v1",
            aggregate_id="acc-1",
            sequence=1,
            user_id="payer",
        )
        event.payload.update(
            {
                "payment_id": "p1",
                "status": "CAPTURED",
                "amount_minor_units": "12345",
                "currency_code": "CNY",
                "payer_user_id": "payer",
                "payee_user_id": "payee",
            }
        )
        replies = await asyncio.gather(
            *(notify.stub.DeliverEvent(pb.DeliverEventRequest(event=event)) for _ in range(10))
        )
        assert sum(not r.duplicate for r in replies) == 1
        payee = await notify.stub.ListNotifications(pb.ListNotificationsRequest(user_id="payee"))
    assert [n.template for n in payee.notifications] == ["payment_received"]


async def test_malformed_events_are_invalid_argument_by_field(sqlite_databases, tmp_path: Path) -> None:
    async with running_notify(sqlite_databases, tmp_path) as notify:
        with pytest.raises(grpc.aio.AioRpcError) as too_long:  # the contract's bounds, checked by the guard
            await notify.stub.DeliverEvent(
                pb.DeliverEventRequest(event=event_pb2.Event(event_id="x" * 40, aggregate_id="a" * 70))
            )
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=event_pb2.Event(aggregate_id="a")))
    assert too_long.value.code() == missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations_of(too_long.value) == ["event.event_id", "event.aggregate_id"]
    assert field_violations_of(missing.value) == ["event.event_id", "event.source", "event.event_type"]
