"""NotifyService servicer: event intake with deduplication, notifications read back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.domain.events import plan
from finmesh.notify.domain.templates import DEFAULT_LOCALE, render
from finmesh.notify.store.schema import notifications, received_events
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.notify.v1 import notify_service_pb2_grpc as pb_grpc
from finmesh.platform.errors import FieldViolation, InvalidArgument, NotFound, Validator
from finmesh.platform.logs import get_logger

_log = get_logger("finmesh.notify")
MAX_ID = 64
MAX_PAGE = 500


class NotifyServicer(pb_grpc.NotifyServiceServicer):
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def DeliverEvent(self, request: pb.DeliverEventRequest, context: grpc.aio.ServicerContext) -> Any:
        event = request.event
        _validate_event(event)
        async with self._engine.connect() as conn:
            seen = await conn.scalar(
                select(received_events.c.event_id).where(received_events.c.event_id == event.event_id)
            )
        if seen:
            return pb.DeliverEventResponse(duplicate=True)
        payload = {k: str(v) for k, v in json_format.MessageToDict(event.payload).items()}
        planned = [p for p in plan(event.event_type, event.user_id, payload) if p.user_id]
        now = datetime.now(UTC)
        rows = [
            {
                "notification_id": str(uuid.uuid4()),
                "event_id": event.event_id,
                "user_id": p.user_id,
                "channel": p.channel,
                "category": p.category,
                "template": p.template,
                "locale": DEFAULT_LOCALE,
                "body": render(p.template, DEFAULT_LOCALE, p.params),
                # Inbox messages are delivered by being recorded.
                "status": "SENT",
                "attempts": 1,
                "created_at": now,
                "sent_at": now,
            }
            for p in planned
        ]
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(received_events).values(
                        event_id=event.event_id, source=event.source, event_type=event.event_type,
                        aggregate_id=event.aggregate_id, sequence=event.sequence, received_at=now,
                    )
                )
                if rows:
                    await conn.execute(insert(notifications), rows)
        except IntegrityError:
            return pb.DeliverEventResponse(duplicate=True)  # a concurrent redelivery won
        _log.info("event_received", event_id=event.event_id, event_type=event.event_type,
                  notifications=len(rows))
        return pb.DeliverEventResponse(notification_ids=[r["notification_id"] for r in rows])

    async def GetNotification(self, request: pb.GetNotificationRequest, context: grpc.aio.ServicerContext) -> Any:
        if not 0 < len(request.notification_id) <= MAX_ID:
            raise InvalidArgument(FieldViolation("notification_id", "required"))
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(notifications).where(notifications.c.notification_id == request.notification_id)
            )).first()
        if row is None:
            raise NotFound("NOTIFICATION_NOT_FOUND", "notification not found")
        return pb.GetNotificationResponse(notification=_to_proto(row))

    async def ListNotifications(self, request: pb.ListNotificationsRequest,
                                context: grpc.aio.ServicerContext) -> Any:
        v = Validator()
        v.require(0 < len(request.user_id) <= MAX_ID, "user_id", "required")
        v.require(request.page_size >= 0, "page_size", "must not be negative")
        v.raise_if_any()
        size = min(request.page_size or 50, MAX_PAGE)
        query = select(notifications).where(notifications.c.user_id == request.user_id)
        if request.page_token:
            query = query.where(notifications.c.notification_id > request.page_token)
        query = query.order_by(notifications.c.notification_id).limit(size + 1)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListNotificationsResponse(
            notifications=[_to_proto(r) for r in rows],
            next_page_token=rows[-1].notification_id if more else "",
        )


def _validate_event(event: Any) -> None:
    v = Validator()
    v.require(0 < len(event.event_id) <= 36, "event.event_id", "required, at most 36 characters")
    v.require(0 < len(event.source) <= 20, "event.source", "required, at most 20 characters")
    v.require(0 < len(event.event_type) <= 100, "event.event_type", "required, at most 100 characters")
    v.require(len(event.aggregate_id) <= MAX_ID, "event.aggregate_id", f"at most {MAX_ID} characters")
    v.require(len(event.user_id) <= MAX_ID, "event.user_id", f"at most {MAX_ID} characters")
    v.raise_if_any()


def _to_proto(row: Any) -> pb.Notification:
    def ts(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
        if moment is None:
            return None
        out = timestamp_pb2.Timestamp()
        out.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        return out

    return pb.Notification(
        notification_id=row.notification_id,
        event_id=row.event_id,
        user_id=row.user_id,
        channel=pb.Channel.Value(f"CHANNEL_{row.channel}"),
        category=pb.Category.Value(f"CATEGORY_{row.category}"),
        template=row.template,
        locale=row.locale,
        status=pb.NotificationStatus.Value(f"NOTIFICATION_STATUS_{row.status}"),
        attempts=row.attempts,
        created_at=ts(row.created_at),
        sent_at=ts(row.sent_at),
    )
