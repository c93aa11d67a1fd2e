"""Marketing: consent recorded and honoured, opt-out, quiet hours in the user's zone, never ahead of codes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from finmesh.notify.usecases.clock import OffsetClock
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.rpc.guard import field_violations_of, reason_of
from tests.notify.conftest import running_notify

SH = ZoneInfo("Asia/Shanghai")
PHONE = "+8613900139000"


def key() -> str:
    return uuid.uuid4().hex


def offer(user: str, phone: str = PHONE) -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(
        idempotency_key=key(),
        user_id=user,
        channel=pb.CHANNEL_SMS,
        category=pb.CATEGORY_MARKETING,
        template="marketing_offer",
        params={"title": "新客礼", "details": "首笔理财享加息。"},
        address=phone,
    )


def consent(user: str, granted: bool, start: str = "", end: str = "", zone: str = "") -> pb.SetConsentRequest:
    return pb.SetConsentRequest(
        idempotency_key=key(),
        consent=pb.Consent(
            user_id=user,
            category=pb.CATEGORY_MARKETING,
            granted=granted,
            quiet_hours_start=start,
            quiet_hours_end=end,
            time_zone=zone,
        ),
    )


async def refused(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def test_marketing_needs_consent_and_honours_opt_out(databases, tmp_path: Path, sms) -> None:
    """No consent: CONSENT_MISSING. Consent: sent. Withdrawn: OPTED_OUT. Refusals are replayed as refusals."""
    async with running_notify(databases, tmp_path, sms=sms) as notify:
        first = offer("m-1")
        error = await refused(notify.stub.SendNotification(first))
        assert (error.code(), reason_of(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "CONSENT_MISSING")
        missing = await refused(
            notify.stub.GetConsent(pb.GetConsentRequest(user_id="m-1", category=pb.CATEGORY_MARKETING))
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND

        recorded = await notify.stub.SetConsent(consent("m-1", True))
        assert recorded.consent.granted and recorded.consent.time_zone == "Asia/Shanghai"
        # The same key keeps its refusal: a retry never turns a recorded refusal into a success.
        assert reason_of(await refused(notify.stub.SendNotification(first))) == "CONSENT_MISSING"
        sent = await notify.stub.SendNotification(offer("m-1"))
        await notify.wait_status(sent.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
        assert "回复 TD 退订" in sms.to(PHONE)[0]["text"]

        await notify.stub.SetConsent(consent("m-1", False))
        error = await refused(notify.stub.SendNotification(offer("m-1")))
        assert (error.code(), reason_of(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "OPTED_OUT")
        got = await notify.stub.GetConsent(pb.GetConsentRequest(user_id="m-1", category=pb.CATEGORY_MARKETING))
        assert not got.consent.granted
    assert len(sms.messages) == 1


async def test_quiet_hours_defer_until_morning_and_a_late_opt_out_wins(databases, tmp_path: Path, sms) -> None:
    """At 23:30 in the user's zone the offer waits for 08:00; one whose user opts out meanwhile is dropped."""
    clock = OffsetClock(datetime(2026, 3, 6, 23, 30, tzinfo=SH))
    async with running_notify(databases, tmp_path, sms=sms, clock=clock) as notify:
        for user in ("m-2", "m-3"):
            await notify.stub.SetConsent(consent(user, True, "22:00", "08:00", "Asia/Shanghai"))
        waiting = await notify.stub.SendNotification(offer("m-2"))
        dropped = await notify.stub.SendNotification(offer("m-3", phone="+8613900139001"))
        assert waiting.notification.status == pb.NOTIFICATION_STATUS_QUEUED
        await asyncio.sleep(0.3)
        assert sms.messages == []
        await notify.stub.SetConsent(consent("m-3", False))
        clock.set(datetime(2026, 3, 7, 8, 0, 1, tzinfo=SH))
        notify.app.worker.wake("MARKETING")
        await notify.wait_status(waiting.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
        await notify.wait_status(dropped.notification.notification_id, pb.NOTIFICATION_STATUS_FAILED)
    assert [m["to"] for m in sms.messages] == [PHONE]


async def test_security_codes_are_not_delayed_by_a_marketing_backlog(databases, tmp_path: Path, sms) -> None:
    """With 12 slow offers queued, a one-time code still goes out at once, on its own lane."""
    sms.delay_seconds = 0.15
    async with running_notify(databases, tmp_path, sms=sms, marketing_concurrency=1) as notify:
        await notify.stub.SetConsent(consent("m-4", True))
        offers = [await notify.stub.SendNotification(offer("m-4")) for _ in range(12)]
        await asyncio.sleep(0.2)  # the marketing lane is busy now
        started = asyncio.get_running_loop().time()
        code = await notify.stub.SendNotification(
            pb.SendNotificationRequest(
                idempotency_key=key(),
                user_id="m-4",
                channel=pb.CHANNEL_SMS,
                category=pb.CATEGORY_SECURITY,
                template="verification_code",
                params={"code": "900111", "minutes": "5"},
                address="+8613900139002",
            )
        )
        await notify.wait_status(code.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
        took = asyncio.get_running_loop().time() - started
        offers_sent_by_then = len(sms.to(PHONE))
        for o in offers:
            await notify.wait_status(o.notification.notification_id, pb.NOTIFICATION_STATUS_SENT, timeout=15)
    assert took < 1.0
    assert offers_sent_by_then < 12


async def test_send_validation_names_every_bad_field(sqlite_databases, tmp_path: Path) -> None:
    """Wrong category for the template, missing params, a bad phone and locale: INVALID_ARGUMENT by field."""
    async with running_notify(sqlite_databases, tmp_path) as notify:
        error = await refused(
            notify.stub.SendNotification(
                pb.SendNotificationRequest(
                    idempotency_key=key(),
                    user_id="m-5",
                    channel=pb.CHANNEL_SMS,
                    category=pb.CATEGORY_MARKETING,
                    template="verification_code",
                    locale="fr",
                    params={"code": "1"},
                    address="13800138000",
                )
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations_of(error) == ["category", "locale", "params", "address"]
        error = await refused(
            notify.stub.SendNotification(
                pb.SendNotificationRequest(
                    user_id="m-5", channel=pb.CHANNEL_WEBHOOK, category=pb.CATEGORY_SECURITY, template="welcome"
                )
            )
        )
        assert field_violations_of(error) == ["idempotency_key"]
        error = await refused(
            notify.stub.SetConsent(
                pb.SetConsentRequest(
                    idempotency_key=key(),
                    consent=pb.Consent(
                        user_id="m-5",
                        category=pb.CATEGORY_SECURITY,
                        granted=True,
                        quiet_hours_start="25:00",
                        time_zone="Mars/Base",
                    ),
                )
            )
        )
        assert field_violations_of(error) == [
            "consent.category",
            "consent.quiet_hours_end",
            "consent.quiet_hours_start",
            "consent.time_zone",
        ]
        error = await refused(
            notify.stub.SendNotification(
                pb.SendNotificationRequest(
                    idempotency_key=key(),
                    user_id="",
                    channel=pb.CHANNEL_WEBHOOK,
                    category=pb.CATEGORY_SECURITY,
                    template="nope",
                )
            )
        )
        assert field_violations_of(error) == ["user_id", "channel", "template"]


async def test_inbox_messages_are_recorded_as_sent_and_listed(sqlite_databases, tmp_path: Path) -> None:
    """The in-app inbox needs no channel: recorded is delivered; paging walks every message once."""
    async with running_notify(sqlite_databases, tmp_path) as notify:
        for _ in range(3):
            sent = await notify.stub.SendNotification(
                pb.SendNotificationRequest(
                    idempotency_key=key(),
                    user_id="m-6",
                    channel=pb.CHANNEL_INBOX,
                    category=pb.CATEGORY_TRANSACTIONAL,
                    template="welcome",
                    locale="en",
                )
            )
            assert sent.notification.status == pb.NOTIFICATION_STATUS_SENT
        page = await notify.stub.ListNotifications(pb.ListNotificationsRequest(user_id="m-6", page_size=2))
        rest = await notify.stub.ListNotifications(
            pb.ListNotificationsRequest(user_id="m-6", page_token=page.next_page_token)
        )
        ids = [n.notification_id for n in [*page.notifications, *rest.notifications]]
        assert len(ids) == len(set(ids)) == 3 and not rest.next_page_token
        missing = await refused(notify.stub.GetNotification(pb.GetNotificationRequest(notification_id="nope")))
        assert (missing.code(), reason_of(missing)) == (grpc.StatusCode.NOT_FOUND, "NOTIFICATION_NOT_FOUND")
