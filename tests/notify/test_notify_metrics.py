"""Notify's metrics against real local SMTP and SMS servers: deliveries by channel and outcome, the queue per
lane while a sender is down and after, dead letters until redriven, and complaints late or nearly late on a
clock the test moves. The gauges are set by the app's own background sampler (every 50 ms here)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from finmesh.notify.usecases.clock import OffsetClock
from finmesh.notify.v1 import notify_service_pb2 as pb
from tests import metrics
from tests.notify.conftest import eventually, running_notify

DELIVERIES = "finmesh.notify.deliveries"
DEPTH = "finmesh.notify.queue.depth"
AGE = "finmesh.notify.queue.oldest_age"
DEAD = "finmesh.notify.dead_letters"
OVERDUE = "finmesh.notify.complaints.overdue"
DUE_SOON = "finmesh.notify.complaints.due_soon"

PHONE = "+8613800138000"
SAMPLE = {"metrics_sample_seconds": 0.05}


def key() -> str:
    return uuid.uuid4().hex


def code_sms(user: str) -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(
        idempotency_key=key(),
        user_id=user,
        channel=pb.CHANNEL_SMS,
        category=pb.CATEGORY_SECURITY,
        template="verification_code",
        params={"code": "482913", "minutes": "5"},
        address=PHONE,
    )


def code_mail(user: str) -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(
        idempotency_key=key(),
        user_id=user,
        channel=pb.CHANNEL_EMAIL,
        category=pb.CATEGORY_SECURITY,
        template="verification_code",
        params={"code": "771234", "minutes": "10"},
        address=f"{user}@example.com",
    )


def deliveries() -> dict[tuple[str, str], float]:
    return {
        (channel, outcome): metrics.value(DELIVERIES, channel=channel, outcome=outcome)
        for channel in ("EMAIL", "SMS", "WEBHOOK")
        for outcome in ("sent", "retried", "dead_lettered", "suppressed", "deferred")
    }


def changed(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    after = deliveries()
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


async def gauge(name: str, want: float, **labels: str) -> None:
    """Wait for the sampler to set `name` to `want`."""
    await eventually(lambda: _read(name, **labels), lambda v: v == want, timeout=10)


async def _read(name: str, **labels: str) -> float:
    return metrics.value(name, **labels)


async def test_deliveries_count_by_channel_and_outcome_and_dead_letters_until_redriven(
    databases, tmp_path: Path, sms, smtp
) -> None:
    """An SMS sent on its third attempt, an e-mail at once, an SMS dead-lettered after four: each attempt
    counted under its channel and outcome. The dead letter shows in the gauge until it is redriven."""
    async with running_notify(databases, tmp_path, sms=sms, smtp=smtp, **SAMPLE) as notify:
        # Every channel and outcome is a series from start-up; webhooks are never deferred by real traffic.
        assert metrics.attribute_values(DELIVERIES, "outcome") >= {
            "sent",
            "retried",
            "dead_lettered",
            "suppressed",
            "deferred",
        }
        assert metrics.value(DELIVERIES, channel="WEBHOOK", outcome="deferred") == 0
        await gauge(DEAD, 0, channel="SMS")
        before = deliveries()

        sms.fail_next(2)
        flaky = await notify.stub.SendNotification(code_sms("u-1"))
        await notify.wait_status(flaky.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
        mail = await notify.stub.SendNotification(code_mail("u-2"))
        await notify.wait_status(mail.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
        assert changed(before) == {("SMS", "retried"): 2, ("SMS", "sent"): 1, ("EMAIL", "sent"): 1}

        sms.fail_number(PHONE)
        doomed = await notify.stub.SendNotification(code_sms("u-3"))
        nid = doomed.notification.notification_id
        await notify.wait_status(nid, pb.NOTIFICATION_STATUS_DEAD_LETTERED)
        assert changed(before) == {
            ("SMS", "retried"): 2 + 3,
            ("SMS", "sent"): 1,
            ("SMS", "dead_lettered"): 1,
            ("EMAIL", "sent"): 1,
        }
        await gauge(DEAD, 1, channel="SMS")
        assert metrics.value(DEAD, channel="EMAIL") == 0

        sms.recover()
        [letter] = (await notify.stub.ListDeadLetters(pb.ListDeadLettersRequest())).dead_letters
        await notify.stub.RedriveDeadLetter(
            pb.RedriveDeadLetterRequest(idempotency_key=key(), dead_letter_id=letter.dead_letter_id)
        )
        await notify.wait_status(nid, pb.NOTIFICATION_STATUS_SENT)
        await gauge(DEAD, 0, channel="SMS")
        assert changed(before)[("SMS", "sent")] == 2


async def test_queue_depth_and_age_rise_while_the_mail_server_refuses_and_fall_after(
    databases, tmp_path: Path, smtp
) -> None:
    """SMTP answering 451 to everything: three codes wait in the SECURITY lane and age; back up, the lane
    empties and its age returns to 0. The other lanes stay at 0 throughout."""
    smtp.fail_next(10_000)
    overrides = {**SAMPLE, "delivery_max_attempts": 1_000}  # retried, never dead-lettered, while it lasts
    async with running_notify(databases, tmp_path, smtp=smtp, **overrides) as notify:
        sent = [await notify.stub.SendNotification(code_mail(f"q-{i}")) for i in range(3)]
        await gauge(DEPTH, 3, lane="SECURITY")
        await eventually(lambda: _read(AGE, lane="SECURITY"), lambda age: age >= 0.3)
        assert metrics.value(DEPTH, lane="MARKETING") == metrics.value(DEPTH, lane="TRANSACTIONAL") == 0
        assert metrics.value(AGE, lane="TRANSACTIONAL") == 0

        smtp.recover()
        for reply in sent:
            await notify.wait_status(reply.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
        await gauge(DEPTH, 0, lane="SECURITY")
        await gauge(AGE, 0, lane="SECURITY")


SH = ZoneInfo("Asia/Shanghai")
FRIDAY_10 = datetime(2026, 3, 6, 10, 0, tzinfo=SH)


async def test_complaints_show_due_soon_then_overdue_until_the_stage_is_met(databases, tmp_path: Path) -> None:
    """Opened Friday 10:00 (accept within 24 h): at 07:00 Saturday it is due soon, at 10:01 overdue; accepted,
    its next deadline is Tuesday's, and it is neither."""
    clock = OffsetClock(FRIDAY_10)
    async with running_notify(databases, tmp_path, clock=clock, **SAMPLE) as notify:
        opened = await notify.stub.OpenComplaint(
            pb.OpenComplaintRequest(idempotency_key=key(), user_id="c-1", subject="转账未到账", body="三天没到")
        )
        await gauge(OVERDUE, 0)
        assert metrics.value(DUE_SOON) == 0

        clock.advance(timedelta(hours=21))  # 3 hours before the acceptance deadline
        await gauge(DUE_SOON, 1)
        assert metrics.value(OVERDUE) == 0

        clock.advance(timedelta(hours=3, minutes=1))
        await gauge(OVERDUE, 1)
        assert metrics.value(DUE_SOON) == 0

        await notify.stub.AdvanceComplaint(
            pb.AdvanceComplaintRequest(
                idempotency_key=key(),
                complaint_id=opened.complaint.complaint_id,
                to_state=pb.COMPLAINT_STATE_ACCEPTED,
            )
        )
        await gauge(OVERDUE, 0)
        assert metrics.value(DUE_SOON) == 0


def offer(user: str, phone: str) -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(
        idempotency_key=key(),
        user_id=user,
        channel=pb.CHANNEL_SMS,
        category=pb.CATEGORY_MARKETING,
        template="marketing_offer",
        params={"title": "新客礼", "details": "首笔理财享加息。"},
        address=phone,
    )


def marketing_consent(user: str, granted: bool) -> pb.SetConsentRequest:
    return pb.SetConsentRequest(
        idempotency_key=key(),
        consent=pb.Consent(
            user_id=user,
            category=pb.CATEGORY_MARKETING,
            granted=granted,
            quiet_hours_start="22:00",
            quiet_hours_end="08:00",
            time_zone="Asia/Shanghai",
        ),
    )


async def test_an_opt_out_while_an_offer_waits_counts_it_suppressed(databases, tmp_path: Path, sms) -> None:
    """Two offers at 23:30 wait for 08:00; at 08:00 one goes out, the other's user opted out meanwhile."""
    clock = OffsetClock(datetime(2026, 3, 6, 23, 30, tzinfo=SH))
    async with running_notify(databases, tmp_path, sms=sms, clock=clock) as notify:
        before = deliveries()
        for user in ("m-1", "m-2"):
            await notify.stub.SetConsent(marketing_consent(user, True))
        waiting = await notify.stub.SendNotification(offer("m-1", PHONE))
        dropped = await notify.stub.SendNotification(offer("m-2", "+8613900139001"))
        await asyncio.sleep(0.3)  # queued for 08:00 at intake: the worker does not touch them before
        assert changed(before) == {}
        await notify.stub.SetConsent(marketing_consent("m-2", False))
        clock.set(datetime(2026, 3, 7, 8, 0, 1, tzinfo=SH))
        notify.app.worker.wake("MARKETING")
        await notify.wait_status(waiting.notification.notification_id, pb.NOTIFICATION_STATUS_SENT)
        await notify.wait_status(dropped.notification.notification_id, pb.NOTIFICATION_STATUS_FAILED)
        assert changed(before) == {("SMS", "sent"): 1, ("SMS", "suppressed"): 1}
