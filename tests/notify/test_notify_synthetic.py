"""Synthetic traffic (payments between test accounts, marked `synthetic` by payments) tells nobody anything."""

from __future__ import annotations

import uuid
from pathlib import Path

from finmesh.common.v1 import event_pb2
from finmesh.notify.v1 import notify_service_pb2 as pb
from tests.notify.conftest import running_notify


def captured(payer: str, payee: str, *, synthetic: bool) -> event_pb2.Event:
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        source="payments",
        event_type="payments.payment.captured.v1",
        aggregate_id=f"acc-{payer}",
        sequence=1,
        user_id=payer,
    )
    event.payload.update(
        {
            "payment_id": uuid.uuid4().hex,
            "status": "CAPTURED",
            "amount_minor_units": "100",
            "currency_code": "CNY",
            "payer_user_id": payer,
            "payee_user_id": payee,
        }
    )
    if synthetic:
        event.payload.update({"synthetic": True})
    return event


async def test_synthetic_payment_events_message_nobody_and_are_still_deduplicated(databases, tmp_path: Path) -> None:
    """A synthetic payment event is received (a redelivery is a duplicate) but queues no notification for either
    party; the same event unmarked notifies both, so the check can tell the two apart."""
    async with running_notify(databases, tmp_path) as notify:
        probe_payer, probe_payee, payer, payee = (uuid.uuid4().hex for _ in range(4))
        test_event = captured(probe_payer, probe_payee, synthetic=True)
        first = await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=test_event))
        again = await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=test_event))
        real = await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=captured(payer, payee, synthetic=False)))
        heard = {}
        for user in (probe_payer, probe_payee, payer, payee):
            listed = await notify.stub.ListNotifications(pb.ListNotificationsRequest(user_id=user))
            heard[user] = [n.template for n in listed.notifications]
    assert (first.duplicate, list(first.notification_ids), again.duplicate) == (False, [], True)
    assert len(real.notification_ids) == 2
    assert heard == {probe_payer: [], probe_payee: [], payer: ["payment_sent"], payee: ["payment_received"]}
