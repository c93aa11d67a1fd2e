"""Complaint tickets against an injectable clock: 24 h to accept, 2 and 5 business days, escalation once."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from finmesh.notify.usecases.clock import OffsetClock
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.rpc.guard import field_violations_of, reason_of
from tests.notify.conftest import OPERATOR_EMAIL, running_notify

SH = ZoneInfo("Asia/Shanghai")
FRIDAY_10 = datetime(2026, 3, 6, 10, 0, tzinfo=SH)


def key() -> str:
    return uuid.uuid4().hex


def minute(stamp) -> datetime:  # type: ignore[no-untyped-def]
    """The offset clock keeps flowing: compare deadlines to the minute."""
    return stamp.ToDatetime(SH).replace(second=0, microsecond=0)


def advance(complaint_id: str, state: int, note: str = "") -> pb.AdvanceComplaintRequest:
    return pb.AdvanceComplaintRequest(idempotency_key=key(), complaint_id=complaint_id, to_state=state, note=note)


async def test_missed_deadlines_escalate_to_operators_once_each(databases, tmp_path: Path, smtp) -> None:
    """Opened Friday 10:00: not accepted by Saturday 10:00 -> one operator e-mail; met deadlines raise nothing."""
    clock = OffsetClock(FRIDAY_10)
    async with running_notify(databases, tmp_path, smtp=smtp, clock=clock) as notify:
        opened = (
            await notify.stub.OpenComplaint(
                pb.OpenComplaintRequest(
                    idempotency_key=key(),
                    user_id="c-1",
                    subject="转账未到账",
                    body="我的转账三天没到，电话 13800138000",
                )
            )
        ).complaint
        assert opened.state == pb.COMPLAINT_STATE_OPEN and not opened.escalated
        assert minute(opened.accept_due) == datetime(2026, 3, 7, 10, 0, tzinfo=SH)
        assert minute(opened.respond_due) == datetime(2026, 3, 10, 10, 0, tzinfo=SH)  # Tuesday
        assert minute(opened.resolve_due) == datetime(2026, 3, 13, 10, 0, tzinfo=SH)  # next Friday
        sla = notify.app.sla

        clock.advance(timedelta(hours=23, minutes=59))
        assert await sla.sweep_once() == 0
        clock.advance(timedelta(minutes=2))
        assert await sla.sweep_once() == 1
        assert await sla.sweep_once() == 0  # escalated once, not on every sweep
        [mail] = await smtp.wait_for(1)
        assert mail["To"] == OPERATOR_EMAIL and opened.complaint_id in mail["Subject"]
        assert "受理" in mail.get_content()
        got = (await notify.stub.GetComplaint(pb.GetComplaintRequest(complaint_id=opened.complaint_id))).complaint
        assert got.escalated and got.subject == "转账未到账"

        accepted = await notify.stub.AdvanceComplaint(advance(opened.complaint_id, pb.COMPLAINT_STATE_ACCEPTED))
        assert accepted.complaint.state == pb.COMPLAINT_STATE_ACCEPTED
        clock.set(datetime(2026, 3, 10, 9, 0, tzinfo=SH))  # Tuesday, an hour before the answer is due
        await notify.stub.AdvanceComplaint(advance(opened.complaint_id, pb.COMPLAINT_STATE_RESPONDED, "已联系用户"))
        clock.set(datetime(2026, 3, 13, 10, 1, tzinfo=SH))  # just past the resolve deadline
        assert await sla.sweep_once() == 1
        resolved = await notify.stub.AdvanceComplaint(advance(opened.complaint_id, pb.COMPLAINT_STATE_RESOLVED))
        assert resolved.complaint.state == pb.COMPLAINT_STATE_RESOLVED
        clock.advance(timedelta(days=30))
        assert await sla.sweep_once() == 0
        mails = await smtp.wait_for(2)
    assert len(mails) == 2 and "办结" in mails[1].get_content()
    assert "13800138000" not in "".join(m.get_content() for m in mails)  # the complaint text stays inside


async def test_a_late_step_escalates_even_before_the_sweeper_runs(databases, tmp_path: Path, smtp) -> None:
    """Accepting after 24 h records the missed deadline at once (and the sweeper does not repeat it)."""
    clock = OffsetClock(FRIDAY_10)
    async with running_notify(databases, tmp_path, smtp=smtp, clock=clock) as notify:
        opened = (
            await notify.stub.OpenComplaint(
                pb.OpenComplaintRequest(idempotency_key=key(), user_id="c-2", subject="扣费有误", body="多扣了一笔")
            )
        ).complaint
        clock.advance(timedelta(hours=30))
        accepted = await notify.stub.AdvanceComplaint(advance(opened.complaint_id, pb.COMPLAINT_STATE_ACCEPTED))
        assert accepted.complaint.escalated
        assert await notify.app.sla.sweep_once() == 0
        await smtp.wait_for(1)
    assert len(smtp.messages) == 1


async def test_holidays_push_the_deadlines_out(sqlite_databases, tmp_path: Path) -> None:
    """With Monday a configured holiday, the 2-business-day answer is due Wednesday."""
    clock = OffsetClock(FRIDAY_10)
    async with running_notify(sqlite_databases, tmp_path, clock=clock, business_holidays=[date(2026, 3, 9)]) as notify:
        opened = (
            await notify.stub.OpenComplaint(
                pb.OpenComplaintRequest(idempotency_key=key(), user_id="c-3", subject="s", body="b")
            )
        ).complaint
    assert minute(opened.respond_due) == datetime(2026, 3, 11, 10, 0, tzinfo=SH)


async def test_complaints_move_in_order_and_refuse_anything_else(databases, tmp_path: Path) -> None:
    """Skipping a step is INVALID_STATE; unknown ids NOT_FOUND; bad input names fields; lists filter by state."""
    async with running_notify(databases, tmp_path) as notify:
        ids = []
        for i in range(3):
            reply = await notify.stub.OpenComplaint(
                pb.OpenComplaintRequest(idempotency_key=f"open-{i}", user_id="c-4", subject=f"s{i}", body="b")
            )
            ids.append(reply.complaint.complaint_id)
        replay = await notify.stub.OpenComplaint(
            pb.OpenComplaintRequest(idempotency_key="open-0", user_id="c-4", subject="s0", body="b")
        )
        assert replay.complaint.complaint_id == ids[0]

        with pytest.raises(grpc.aio.AioRpcError) as skipped:
            await notify.stub.AdvanceComplaint(advance(ids[0], pb.COMPLAINT_STATE_RESOLVED))
        assert (skipped.value.code(), reason_of(skipped.value)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "INVALID_STATE",
        )
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await notify.stub.AdvanceComplaint(advance("no-such", pb.COMPLAINT_STATE_ACCEPTED))
        assert (unknown.value.code(), reason_of(unknown.value)) == (grpc.StatusCode.NOT_FOUND, "COMPLAINT_NOT_FOUND")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await notify.stub.AdvanceComplaint(
                pb.AdvanceComplaintRequest(idempotency_key=key(), complaint_id=ids[0], to_state=pb.COMPLAINT_STATE_OPEN)
            )
        assert field_violations_of(bad.value) == ["to_state"]
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await notify.stub.OpenComplaint(pb.OpenComplaintRequest(idempotency_key=key(), user_id="c-4"))
        assert field_violations_of(empty.value) == ["subject", "body"]

        await notify.stub.AdvanceComplaint(advance(ids[1], pb.COMPLAINT_STATE_ACCEPTED))
        open_ones = await notify.stub.ListComplaints(pb.ListComplaintsRequest(state=pb.COMPLAINT_STATE_OPEN))
        assert [c.complaint_id for c in open_ones.complaints] == [ids[0], ids[2]]
        first = await notify.stub.ListComplaints(pb.ListComplaintsRequest(page_size=2))
        rest = await notify.stub.ListComplaints(pb.ListComplaintsRequest(page_token=first.next_page_token))
        assert [c.complaint_id for c in [*first.complaints, *rest.complaints]] == ids
        receipts = await notify.stub.ListNotifications(pb.ListNotificationsRequest(user_id="c-4"))
        assert [n.template for n in receipts.notifications] == ["complaint_received"] * 3
