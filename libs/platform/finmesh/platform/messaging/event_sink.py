"""Where outbox relays hand events, by FINMESH_EVENTS_TRANSPORT: `event_sink_for` picks one.

- "grpc": notify's DeliverEvents, a round's events per call (DeliverEvent, one per call, for an older notify).
  Both are idempotent on event id, so retried.
- "rabbitmq": the producer's exchange on the broker, with publisher confirms
  (finmesh.platform.messaging.rabbitmq.publisher.RabbitEventSink); each consumer takes its copy from its own queue.

Both offer the relay's contract (`deliver`, `deliver_batch` -> BatchOutcome per event, SinkUnavailable) and
`close()`; `name` labels the outbox gauges' consumer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc

from finmesh.common.v1 import event_pb2
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.messaging.rabbitmq.publisher import RabbitEventSink
from finmesh.platform.messaging.rabbitmq.topology import Broker
from finmesh.platform.messaging.relay import BatchOutcome, BatchUnsupported, SinkUnavailable

NOTIFY_IDEMPOTENT_METHODS = [
    ("finmesh.notify.v1.NotifyService", "DeliverEvent"),
    ("finmesh.notify.v1.NotifyService", "DeliverEvents"),
]

# Notify is down or shedding load: the relay pauses as a whole instead of
# charging the event an attempt (see finmesh.platform.messaging.relay.SinkUnavailable).
_SINK_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
_TAKEN = (notify_pb.EVENT_OUTCOME_DELIVERED, notify_pb.EVENT_OUTCOME_DUPLICATE)


class EventSink(Protocol):
    name: str

    async def deliver(self, event: event_pb2.Event) -> None: ...

    async def deliver_batch(self, events: Sequence[event_pb2.Event]) -> list[BatchOutcome]: ...

    async def close(self) -> None: ...


def event_sink_for(settings: ServiceSettings, producer: str, notify_channel: grpc.aio.Channel) -> EventSink:
    """The sink `producer`'s relay delivers through, by settings.events_transport."""
    if settings.events_transport == "rabbitmq":
        return RabbitEventSink(Broker.from_settings(settings), producer)
    return NotifyEventSink(notify_channel)


class NotifyEventSink:
    name = "notify"

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

    async def deliver_batch(self, events: Sequence[event_pb2.Event]) -> list[BatchOutcome]:
        """One outcome per event, in order (OutboxRelay finds this beside `deliver` and prefers it)."""
        try:
            reply = await self._stub.DeliverEvents(notify_pb.DeliverEventsRequest(events=events), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _SINK_DOWN:
                raise SinkUnavailable(f"notify {error.code().name}") from error
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                # A notify from before DeliverEvents (blue-green rollouts run both for a while).
                raise BatchUnsupported("notify has no DeliverEvents") from error
            raise
        return [outcome_of(result) for result in reply.results]

    async def close(self) -> None:
        """The channel is the service's: closed with its others."""


def outcome_of(result: notify_pb.EventResult) -> BatchOutcome:
    """Notify's answer for one event as the relay's (and the broker consumer's) outcome."""
    if result.outcome in _TAKEN:
        return BatchOutcome(taken=True)
    if result.outcome == notify_pb.EVENT_OUTCOME_DEFERRED:
        return BatchOutcome(taken=False, deferred=True)
    reasons = "; ".join(f"{v.field}: {v.description}" for v in result.field_violations)
    return BatchOutcome(taken=False, error=f"notify refused {result.event_id}: {reasons or 'no reason given'}")
