"""Where outbox relays hand events: notify's DeliverEvent (idempotent on event id, so retried)."""

from __future__ import annotations

import grpc

from finmesh.common.v1 import event_pb2
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc

NOTIFY_IDEMPOTENT_METHODS = [("finmesh.notify.v1.NotifyService", "DeliverEvent")]


class NotifyEventSink:
    def __init__(self, channel: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self._stub = notify_grpc.NotifyServiceStub(channel)
        self._timeout = timeout

    async def deliver(self, event: event_pb2.Event) -> None:
        await self._stub.DeliverEvent(notify_pb.DeliverEventRequest(event=event), timeout=self._timeout)
