"""identity.user.erased.v1 at notify: the person's data is overwritten, waiting messages never go out,
and nothing new is accepted for them (USER_ERASED). Checked in notify's own database, not only its API."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import insert, select, update

from finmesh.common.v1 import event_pb2
from finmesh.notify.store.schema import (
    complaint_events,
    complaints,
    consent_log,
    consents,
    erased_users,
    idempotency,
    notifications,
    profiles,
)
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.rpc.guard import reason_of
from finmesh.platform.storage.db import create_engine
from tests.notify.conftest import Notify, eventually, running_notify

PHONE = "+8613800138000"
OTHER_PHONE = "+8613900139000"
SUBJECT, BODY, NOTE = "扣费有误 13800138000", "多扣了一笔，请联系我", "已电话联系本人"
# A failed SMS waits this long before its retry: the test erases the user inside that gap.
SLOW_RETRIES = {
    "delivery_base_backoff_seconds": 60.0,
    "delivery_max_backoff_seconds": 120.0,
    "delivery_max_attempts": 8,
}


def key() -> str:
    return uuid.uuid4().hex


def identity_event(event_type: str, user_id: str, sequence: int, **payload: str) -> event_pb2.Event:
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        source="identity",
        event_type=event_type,
        aggregate_id=user_id,
        sequence=sequence,
        user_id=user_id,
    )
    event.payload.update({"user_id": user_id, **payload})
    return event


def code_sms(user: str, phone: str = PHONE) -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(
        idempotency_key=key(),
        user_id=user,
        channel=pb.CHANNEL_SMS,
        category=pb.CATEGORY_SECURITY,
        template="verification_code",
        params={"code": "482913", "minutes": "5"},
        address=phone,
    )


async def deliver(notify: Notify, event: event_pb2.Event) -> pb.DeliverEventResponse:
    return await notify.stub.DeliverEvent(pb.DeliverEventRequest(event=event))


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


async def rows(url: str, query: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(query)).all())
    finally:
        await engine.dispose()


async def write(url: str, statement: Any) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(statement)
    finally:
        await engine.dispose()


async def test_erasure_overwrites_the_persons_data_and_cancels_what_waits(
    databases, tmp_path: Path, sms, receiver
) -> None:
    """Everything notify holds of the person, in every table, is overwritten or deleted; a retrying SMS and a
    dead letter are never sent; a webhook subscribed to erasures still hears of it; redelivery changes nothing."""
    user = str(uuid.uuid4())
    sms.fail_number(PHONE)
    async with running_notify(databases, tmp_path, sms=sms, **SLOW_RETRIES) as notify:
        hook = await notify.stub.CreateWebhook(
            pb.CreateWebhookRequest(idempotency_key=key(), url=receiver.url, event_types=["identity.user.erased.v1"])
        )
        receiver.secret = hook.signing_secret
        await deliver(notify, identity_event("identity.user.registered.v1", user, 1, locale="en", kind="PERSONAL"))
        await notify.stub.SetConsent(
            pb.SetConsentRequest(
                idempotency_key=key(),
                consent=pb.Consent(
                    user_id=user, category=pb.CATEGORY_MARKETING, granted=True, time_zone="Europe/Berlin"
                ),
            )
        )
        retrying = (await notify.stub.SendNotification(code_sms(user))).notification.notification_id
        await eventually(lambda: notify.notification(retrying), lambda n: n.attempts == 1)
        sms.fail_next(1, status=400)  # a permanent refusal: straight to the dead letters
        dead = (await notify.stub.SendNotification(code_sms(user, OTHER_PHONE))).notification.notification_id
        await notify.wait_status(dead, pb.NOTIFICATION_STATUS_DEAD_LETTERED)
        [letter] = (await notify.stub.ListDeadLetters(pb.ListDeadLettersRequest())).dead_letters
        opened = (
            await notify.stub.OpenComplaint(
                pb.OpenComplaintRequest(idempotency_key="complaint-1", user_id=user, subject=SUBJECT, body=BODY)
            )
        ).complaint
        assert opened.subject == SUBJECT
        await notify.stub.AdvanceComplaint(
            pb.AdvanceComplaintRequest(
                idempotency_key=key(), complaint_id=opened.complaint_id, to_state=pb.COMPLAINT_STATE_ACCEPTED, note=NOTE
            )
        )

        erased = identity_event("identity.user.erased.v1", user, 2)
        first = await deliver(notify, erased)
        again = await deliver(notify, erased)
        assert not first.duplicate and again.duplicate and not again.notification_ids

        assert (await notify.notification(retrying)).status == pb.NOTIFICATION_STATUS_FAILED
        assert (await notify.notification(dead)).status == pb.NOTIFICATION_STATUS_FAILED
        redrive = await refusal(
            notify.stub.RedriveDeadLetter(
                pb.RedriveDeadLetterRequest(idempotency_key=key(), dead_letter_id=letter.dead_letter_id)
            )
        )
        assert reason_of(redrive) == "USER_ERASED"
        complaint = await notify.stub.GetComplaint(pb.GetComplaintRequest(complaint_id=opened.complaint_id))
        assert (complaint.complaint.subject, complaint.complaint.state) == ("", pb.COMPLAINT_STATE_ACCEPTED)
        # The same OpenComplaint retried: a replay, and the replay shows the text erased too.
        replay = await notify.stub.OpenComplaint(
            pb.OpenComplaintRequest(idempotency_key="complaint-1", user_id=user, subject=SUBJECT, body=BODY)
        )
        assert (replay.complaint.complaint_id, replay.complaint.subject) == (opened.complaint_id, "")

        [announced] = await receiver.wait_for(1)
        sms.recover()
        notify.app.worker.wake("SECURITY")
        await asyncio.sleep(0.5)  # time enough for the worker to send anything it (wrongly) still had
    assert announced["event_type"] == "identity.user.erased.v1" and announced["user_id"] == user
    assert sms.messages == []

    url = notify.database_url
    everything = await rows(url, select(notifications).where(notifications.c.user_id == user))
    # The erasure event itself, to its subscriber: the mesh's event (ids only), not a message to the person.
    [announcement] = [r for r in everything if r.channel == "WEBHOOK"]
    assert (announcement.event_id, announcement.status) == (erased.event_id, "SENT")
    mine = [r for r in everything if r.channel != "WEBHOOK"]
    assert {r.channel for r in mine} == {"SMS", "INBOX"}  # the codes and the welcome
    for row in mine:
        assert (row.address_sealed, row.subject_sealed, row.body_sealed) == (None, None, b"")
        assert row.status in ("FAILED", "SENT")
    assert {r.notification_id: r.last_error for r in mine if r.status == "FAILED"} == {
        retrying: "USER_ERASED",
        dead: "USER_ERASED",
    }
    assert await rows(url, select(profiles).where(profiles.c.user_id == user)) == []
    assert await rows(url, select(consents).where(consents.c.user_id == user)) == []
    # The consent log stays as evidence of what was agreed; it holds no contact data.
    assert [r.granted for r in await rows(url, select(consent_log).where(consent_log.c.user_id == user))] == [True]
    [ticket] = await rows(url, select(complaints).where(complaints.c.user_id == user))
    assert (ticket.subject_sealed, ticket.body_sealed) == (b"", b"")
    notes = await rows(
        url, select(complaint_events.c.note_sealed).where(complaint_events.c.complaint_id == opened.complaint_id)
    )
    assert notes == [(None,)]
    # Stored replies are not sealed, so no complaint text may be in them at all.
    for table in (idempotency.scoped, idempotency.legacy):  # the previous release's table gets a mirror too
        for stored in await rows(url, select(table.c.response).where(table.c.response.is_not(None))):
            assert SUBJECT.encode() not in stored.response and BODY.encode() not in stored.response
    [marker] = await rows(url, select(erased_users))
    assert (marker.user_id, marker.event_id) == (user, erased.event_id)


async def test_nothing_new_is_accepted_for_an_erased_user(databases, tmp_path: Path) -> None:
    """After the erasure: sends, consent and complaints are refused USER_ERASED; later events plan no receipt
    for them, while the other party of the same event still gets theirs."""
    user, payee = str(uuid.uuid4()), str(uuid.uuid4())
    async with running_notify(databases, tmp_path) as notify:
        await deliver(notify, identity_event("identity.user.registered.v1", user, 1, locale="en"))
        await deliver(notify, identity_event("identity.user.erased.v1", user, 2))

        for call in (
            notify.stub.SendNotification(code_sms(user)),
            notify.stub.SendNotification(
                pb.SendNotificationRequest(
                    idempotency_key=key(),
                    user_id=user,
                    channel=pb.CHANNEL_INBOX,
                    category=pb.CATEGORY_TRANSACTIONAL,
                    template="welcome",
                )
            ),
            notify.stub.SetConsent(
                pb.SetConsentRequest(
                    idempotency_key=key(),
                    consent=pb.Consent(user_id=user, category=pb.CATEGORY_MARKETING, granted=True),
                )
            ),
            notify.stub.OpenComplaint(
                pb.OpenComplaintRequest(idempotency_key=key(), user_id=user, subject="s", body="b")
            ),
        ):
            error = await refusal(call)
            assert (error.code(), reason_of(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "USER_ERASED")

        # A payment event that was already on its way from payments when identity erased the payer.
        captured = event_pb2.Event(
            event_id=str(uuid.uuid4()),
            source="payments",
            event_type="payments.payment.captured.v1",
            aggregate_id="acc-1",
            sequence=1,
            user_id=user,
        )
        captured.payload.update(
            {
                "payment_id": "p1",
                "status": "CAPTURED",
                "amount_minor_units": "100",
                "currency_code": "CNY",
                "payer_user_id": user,
                "payee_user_id": payee,
            }
        )
        await deliver(notify, captured)
        listed = await notify.stub.ListNotifications(pb.ListNotificationsRequest(user_id=user))
        received = await notify.stub.ListNotifications(pb.ListNotificationsRequest(user_id=payee))
    assert [n.template for n in listed.notifications] == ["welcome"]  # from before the erasure, overwritten
    assert [n.template for n in received.notifications] == ["payment_received"]
    assert await rows(notify.database_url, select(profiles)) == []


async def test_a_message_that_raced_the_erasure_is_withdrawn_at_send_time(databases, tmp_path: Path, sms) -> None:
    """A message accepted while the erasure committed escapes its cancel; the worker checks again before
    sending. Simulated by recording the erasure marker alone, as the racing transaction would leave it."""
    user = str(uuid.uuid4())
    sms.fail_number(PHONE)
    async with running_notify(databases, tmp_path, sms=sms, **SLOW_RETRIES) as notify:
        queued = (await notify.stub.SendNotification(code_sms(user))).notification.notification_id
        await eventually(lambda: notify.notification(queued), lambda n: n.attempts == 1)
        await write(
            notify.database_url,
            insert(erased_users).values(user_id=user, event_id=str(uuid.uuid4()), erased_at=datetime.now(UTC)),
        )
        sms.recover()
        await write(
            notify.database_url,
            update(notifications)
            .where(notifications.c.notification_id == queued)
            .values(next_attempt_at=datetime.now(UTC)),
        )
        notify.app.worker.wake("SECURITY")
        withdrawn = await notify.wait_status(queued, pb.NOTIFICATION_STATUS_FAILED)
    assert withdrawn.attempts == 1
    assert sms.messages == []
    [row] = await rows(notify.database_url, select(notifications).where(notifications.c.notification_id == queued))
    assert (row.last_error, row.address_sealed, row.body_sealed) == ("USER_ERASED", None, b"")
