"""The relay's sink for FINMESH_EVENTS_TRANSPORT=rabbitmq: each event published with a publisher confirm.

`deliver_batch` publishes a round's events on one channel in the relay's order (each aggregate's run in
sequence order: frames on one channel reach a queue in the order sent) and waits for every confirm; an event
counts as taken only once the broker confirmed it, so the relay marks a row delivered only then. Order per
aggregate across rounds is the relay's: it never claims an aggregate's next event before the previous one is
marked. An event no queue is bound for comes back (mandatory) and is charged as a failed attempt, so it waits
in the outbox's dead letters rather than vanishing. A broker that cannot be reached, or a connection lost
before the confirms, is SinkUnavailable: the relay pauses and probes, and charges no event an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from opentelemetry import trace
from pamqp import commands as spec

from finmesh.common.v1 import event_pb2
from finmesh.platform.messaging.rabbitmq.topology import CONTENT_TYPE, Broker, declare_exchange
from finmesh.platform.messaging.rabbitmq.tracing import publish_span
from finmesh.platform.messaging.relay import BatchOutcome, EventRefused, SinkUnavailable
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.telemetry import extract_context, inject_context

_log = get_logger("finmesh.outbox.rabbitmq")

# Failures of the connection or channel (not of one message): the whole batch is retried later.
_LINK_DOWN = (OSError, aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError, TimeoutError)


class RabbitEventSink:
    """Publishes one producer's outbox events to its exchange, `<prefix>.<producer>.events`."""

    name = "rabbitmq"

    def __init__(self, broker: Broker, producer: str, *, timeout: float = 5.0) -> None:
        self._broker = broker
        self._producer = producer
        self._exchange = broker.exchange(producer)
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self.connects = 0  # connections opened so far (a reconnect after each loss)

    async def deliver(self, event: event_pb2.Event) -> None:
        [outcome] = await self.deliver_batch([event])
        if not outcome.taken:
            raise EventRefused(outcome.error)

    async def deliver_batch(self, events: Sequence[event_pb2.Event]) -> list[BatchOutcome]:
        """One outcome per event, in order; raises SinkUnavailable when the broker is out of reach."""
        async with self._lock:  # one round at a time on the channel: the relay's order is the wire order
            channel = await self._ready()
            try:
                underlay = await channel.get_underlay_channel()
                async with asyncio.timeout(self._timeout):
                    # Tasks start in order and take the channel's write lock in order (FIFO), so frames go out in
                    # the relay's order; the confirms are awaited together.
                    results = await asyncio.gather(
                        *(self._publish(underlay, event, alone=len(events) == 1) for event in events),
                        return_exceptions=True,
                    )
            except _LINK_DOWN as error:
                await self._drop(error)
                raise SinkUnavailable(f"rabbitmq {type(error).__name__}") from error
            down = next((r for r in results if isinstance(r, _LINK_DOWN)), None)
            if down is not None:
                await self._drop(down)
                raise SinkUnavailable(f"rabbitmq {type(down).__name__}") from down
        return [_outcome(event, result) for event, result in zip(events, results, strict=True)]

    async def _publish(self, underlay: Any, event: event_pb2.Event, *, alone: bool) -> Any:
        routing_key = self._broker.routing_key(event.aggregate_id, event.event_type)
        # Alone, the relay's send span (a child of the producing trace) is current; in a batch each message
        # continues its own producing trace instead of the batch's.
        in_send = alone and trace.get_current_span().get_span_context().is_valid
        carrier = {"traceparent": event.traceparent, "tracestate": event.tracestate}
        parent = None if in_send else extract_context(carrier)
        with publish_span(self._exchange, routing_key, event.event_id, parent):
            headers: dict[str, Any] = {
                **inject_context(),
                "x-finmesh-aggregate-id": event.aggregate_id,
                "x-finmesh-sequence": event.sequence,
            }
            properties = spec.Basic.Properties(
                content_type=CONTENT_TYPE,
                delivery_mode=2,  # persistent (quorum queues keep every message on disk anyway)
                message_id=event.event_id,
                message_type=event.event_type,
                app_id=self._producer,
                timestamp=datetime.now(UTC),
                headers=headers,
            )
            return await underlay.basic_publish(
                event.SerializeToString(),
                exchange=self._exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
            )

    async def _ready(self) -> AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        await self._drop(None)
        try:
            self._connection = await self._broker.connect(self._timeout)
            self._channel = await self._connection.channel(publisher_confirms=True)
            await declare_exchange(self._channel, self._broker, self._producer)
        except (*_LINK_DOWN, aiormq.exceptions.AMQPError) as error:
            await self._drop(error)
            raise SinkUnavailable(f"rabbitmq at {self._broker.where}: {type(error).__name__}") from error
        self.connects += 1
        _log.info("rabbitmq_connected", producer=self._producer, broker=self._broker.where)
        return self._channel

    async def _drop(self, error: BaseException | None) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            if error is not None:
                _log.warning("rabbitmq_connection_lost", producer=self._producer, error=type(error).__name__)
            # A broken connection may fail to close; it is dropped anyway.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2.0)

    async def close(self) -> None:
        await self._drop(None)


def _outcome(event: event_pb2.Event, result: Any) -> BatchOutcome:
    if isinstance(result, spec.Basic.Ack):
        return BatchOutcome(taken=True)
    if isinstance(result, DeliveredMessage):
        return BatchOutcome(taken=False, error=f"no queue is bound for {event.event_type} (returned unroutable)")
    if isinstance(result, BaseException):
        return BatchOutcome(taken=False, error=f"broker refused {event.event_id}: {type(result).__name__}")
    return BatchOutcome(taken=False, error=f"broker answered {type(result).__name__}")
