"""Where outbox relays hand events: notify's DeliverEvent (idempotent on event id, so retried)."""

from __future__ import annotations

import grpc

from finmesh.common.v1 import event_pb2
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.platform.outbox import SinkUnavailable

NOTIFY_IDEMPOTENT_METHODS = [("finmesh.notify.v1.NotifyService", "DeliverEvent")]

# Notify is down or shedding load: the relay pauses as a whole instead of
# charging the event an attempt (see finmesh.platform.outbox.SinkUnavailable).
_SINK_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class NotifyEventSink:
    def __init__(self, channel: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self._stub = notify_grpc.NotifyServiceStub(channel)
        self._timeout = timeout

    async def deliver(self, event: event_pb2.Event) -> None:
        try:
            await self._stub.DeliverEvent(notify_pb.DeliverEventRequest(event=event), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _SINK_DOWN:
                raise SinkUnavailable(f"notify {error.code().name}") from error
            raise
