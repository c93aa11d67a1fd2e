"""Between the contract and notify's own shapes: incoming events in; rows (and the views use cases make of them)
out as protobuf messages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from finmesh.common.v1 import event_pb2
from finmesh.notify.domain.events import IncomingEvent
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.storage.db import aware


def incoming_event(event: event_pb2.Event) -> IncomingEvent:
    return IncomingEvent(
        event_id=event.event_id,
        source=event.source,
        event_type=event.event_type,
        aggregate_id=event.aggregate_id,
        sequence=event.sequence,
        user_id=event.user_id,
        occurred_at=event.occurred_at.ToJsonString(),
        data=json_format.MessageToDict(event.payload),
        traceparent=event.traceparent,
        tracestate=event.tracestate,
    )


def ts(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(aware(moment))
    return out


def notification(row: Mapping[str, Any]) -> pb.Notification:
    return pb.Notification(
        notification_id=row["notification_id"],
        event_id=row["event_id"],
        user_id=row["user_id"],
        channel=pb.Channel.Value(f"CHANNEL_{row['channel']}"),
        category=pb.Category.Value(f"CATEGORY_{row['category']}"),
        template=row["template"],
        locale=row["locale"],
        status=pb.NotificationStatus.Value(f"NOTIFICATION_STATUS_{row['status']}"),
        attempts=row["attempts"],
        created_at=ts(row["created_at"]),
        sent_at=ts(row["sent_at"]),
    )


def consent(row: Mapping[str, Any]) -> pb.Consent:
    return pb.Consent(
        user_id=row["user_id"],
        category=pb.Category.Value(f"CATEGORY_{row['category']}"),
        granted=row["granted"],
        quiet_hours_start=row["quiet_hours_start"],
        quiet_hours_end=row["quiet_hours_end"],
        time_zone=row["time_zone"],
        recorded_at=ts(row["recorded_at"]),
    )


def dead_letter(row: Mapping[str, Any]) -> pb.DeadLetter:
    return pb.DeadLetter(
        dead_letter_id=row["dead_letter_id"],
        notification_id=row["notification_id"],
        channel=pb.Channel.Value(f"CHANNEL_{row['channel']}"),
        attempts=row["attempts"],
        last_error=row["last_error"],
        created_at=ts(row["created_at"]),
        redriven=row["redriven"],
    )


def complaint(row: Mapping[str, Any]) -> pb.Complaint:
    """`row` carries the opened `subject` (finmesh.notify.usecases.complaints)."""
    return pb.Complaint(
        complaint_id=row["complaint_id"],
        user_id=row["user_id"],
        subject=row["subject"],
        state=pb.ComplaintState.Value(f"COMPLAINT_STATE_{row['state']}"),
        opened_at=ts(row["opened_at"]),
        accept_due=ts(row["accept_due"]),
        respond_due=ts(row["respond_due"]),
        resolve_due=ts(row["resolve_due"]),
        escalated=row["escalated"],
    )


def webhook(row: Mapping[str, Any]) -> pb.Webhook:
    """`row` carries the opened `url` (finmesh.notify.usecases.webhooks)."""
    return pb.Webhook(
        webhook_id=row["webhook_id"],
        url=row["url"],
        event_types=list(row["event_types"]),
        created_at=ts(row["created_at"]),
    )
