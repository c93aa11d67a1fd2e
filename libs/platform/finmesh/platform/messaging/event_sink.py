"""Where outbox relays hand events, by FINMESH_EVENTS_TRANSPORT: `event_sink_for` picks one.

- "grpc": notify's DeliverEvents, a round's events per call (DeliverEvent, one per call, for an older notify);
  any other consumer's finmesh.common.v1.EventIntakeService/DeliverEvents (IntakeEventSink: the one contract
  every consumer but notify serves, so a producer needs no code per consumer; one relay per consumer,
  finmesh.platform.messaging.consumers). All are idempotent on event id, so retried.
- "rabbitmq": the producer's exchange on the broker, with publisher confirms
  (finmesh.platform.messaging.rabbitmq.publisher.RabbitEventSink); each consumer takes its copy from its own queue.

Both offer the relay's contract (`deliver`, `deliver_batch` -> BatchOutcome per event, SinkUnavailable) and
`close()`; `name` labels the outbox gauges' consumer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc

from finmesh.common.v1 import event_intake_pb2 as intake_pb
from finmesh.common.v1 import event_intake_pb2_grpc as intake_grpc
from finmesh.common.v1 import event_pb2
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.messaging.rabbitmq.publisher import RabbitEventSink
from finmesh.platform.messaging.rabbitmq.topology import Broker
from finmesh.platform.messaging.relay import BatchOutcome, BatchUnsupported, EventRefused, SinkUnavailable

INTAKE_IDEMPOTENT_METHODS = [("finmesh.common.v1.EventIntakeService", "DeliverEvents")]

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


_INTAKE_TAKEN = (intake_pb.EVENT_OUTCOME_DELIVERED, intake_pb.EVENT_OUTCOME_DUPLICATE)
# Besides down or shedding load: a consumer from before it served the intake (a rollout that reaches the
# producers first) answers UNIMPLEMENTED. Its events wait, probed with backoff, instead of each failing its
# way to the dead letters.
_INTAKE_NOT_READY = (*_SINK_DOWN, grpc.StatusCode.UNIMPLEMENTED)


class IntakeEventSink:
    """A consumer serving finmesh.common.v1.EventIntakeService (risk, and any consumer added later)."""

    def __init__(self, channel: grpc.aio.Channel, consumer: str, timeout: float = 5.0) -> None:
        self._stub = intake_grpc.EventIntakeServiceStub(channel)
        self._consumer = self.name = consumer
        self._timeout = timeout

    async def close(self) -> None:
        """The channel is closed with the producer's relays (finmesh.platform.messaging.consumers.EventRelays)."""

    async def deliver(self, event: event_pb2.Event) -> None:
        """One event: a batch of one (the relay prefers deliver_batch, and probes a down consumer with this)."""
        [outcome] = await self.deliver_batch([event])
        if not outcome.taken:
            raise EventRefused(outcome.error or f"{self._consumer} deferred {event.event_id}")

    async def deliver_batch(self, events: Sequence[event_pb2.Event]) -> list[BatchOutcome]:
        try:
            reply = await self._stub.DeliverEvents(intake_pb.DeliverEventsRequest(events=events), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _INTAKE_NOT_READY:
                raise SinkUnavailable(f"{self._consumer} {error.code().name}") from error
            raise
        return [intake_outcome_of(result, self._consumer) for result in reply.results]


def intake_outcome_of(result: intake_pb.EventResult, consumer: str) -> BatchOutcome:
    """A consumer's EventIntakeService answer for one event as the relay's (and the broker consumer's) outcome."""
    if result.outcome in _INTAKE_TAKEN:
        return BatchOutcome(taken=True)
    if result.outcome == intake_pb.EVENT_OUTCOME_DEFERRED:
        return BatchOutcome(taken=False, deferred=True)
    reasons = "; ".join(f"{v.field}: {v.description}" for v in result.field_violations)
    return BatchOutcome(taken=False, error=f"{consumer} refused {result.event_id}: {reasons or 'no reason given'}")
