"""A consumer of outbox events on RabbitMQ: its own partitioned quorum queues, acks after the handler commits.

Messages are taken from the consumer's partition queues in batches of what has arrived (up to the prefetch),
decoded into finmesh.common.v1.Event and handed to `handle` in arrival order (per queue, the publish order).
`handle` returns one BatchOutcome per event, after its transaction committed:

- taken (new or a duplicate) -> ack;
- deferred (held back behind an earlier event of its aggregate) -> nack and requeue (a redelivery);
- refused (`error`) -> a copy to the consumer's dead letters with the reason, then ack.

A batch that raises a transient error (the database is down: finmesh.platform.storage.db.is_transient) is
tried again in place with backoff: its messages stay unacknowledged and nobody is charged a delivery. Any other
error splits the batch into single events; a single event that still fails is requeued, and the broker
dead-letters it after `max_deliveries` (a message that crashes the process each time gets there too). A
connection lost at any point drops the unacknowledged messages back to the queue: they come again and the
handler's dedupe (by event id) applies each once. The consumer reconnects with backoff until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from google.protobuf.message import DecodeError

from finmesh.common.v1 import event_pb2
from finmesh.platform.backoff import Backoff
from finmesh.platform.messaging.rabbitmq.topology import HEADER_ERROR, HEADER_QUEUE, Broker, copy_of, declare_consumer
from finmesh.platform.messaging.rabbitmq.tracing import process_span
from finmesh.platform.messaging.relay import BatchOutcome
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import is_transient

_log = get_logger("finmesh.events.consumer")

Handle = Callable[[Sequence[event_pb2.Event]], Awaitable[Sequence[BatchOutcome]]]
# (producer, event-type pattern): a topic pattern over event types, `*` one word, `#` any number.
Binding = tuple[str, str]

_RETRY = BatchOutcome(taken=False, deferred=True)


class EventConsumer:
    """Consumes `consumer`'s queues until stopped (start() runs it in the background)."""

    def __init__(
        self,
        broker: Broker,
        consumer: str,
        bindings: Sequence[Binding],
        handle: Handle,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        if not bindings:
            raise ValueError("a consumer needs at least one (producer, pattern) binding")
        self.broker = broker
        self.consumer = consumer
        self._bindings = list(bindings)
        self._handle = handle
        self._backoff = backoff or Backoff(0.2, 5.0)
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set while consuming (tests wait on it)
        self.acked = 0
        self.sessions = 0  # connections that reached consuming (a new one after each loss)
        self.dead_lettered = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.consumer}-events-consumer")

    async def stop(self) -> None:
        """Stop at once: messages taken but not acknowledged go back to the queue (and come again)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.ready.clear()

    async def _run(self) -> None:
        outages = 0
        while True:
            sessions = self.sessions
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the consumer must outlive the broker
                if self.sessions > sessions:
                    outages = 0  # it was consuming: a fresh outage, retried quickly at first
                if not outages:
                    _log.warning(
                        "events_consumer_disconnected",
                        consumer=self.consumer,
                        broker=self.broker.where,
                        error=type(error).__name__,
                    )
                outages += 1
            self.ready.clear()
            await asyncio.sleep(self._backoff.delay(outages))

    async def _session(self) -> None:
        """One connection: declare, consume, and process until the connection is lost."""
        connection = await self.broker.connect()
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self.broker.prefetch)
            queues = await declare_consumer(channel, self.broker, self.consumer, self._bindings)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            for queue in queues:
                await queue.consume(inbox.put, no_ack=False)
            _log.info("events_consumer_ready", consumer=self.consumer, broker=self.broker.where, queues=len(queues))
            self.sessions += 1
            self.ready.set()
            while not lost.is_set():
                first = await _next(inbox, lost)
                if first is None:
                    break
                await self._process(channel, await _gather(first, inbox, self.broker.prefetch), lost)
            raise ConnectionError("connection to the broker lost")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wait_for(connection.close(), 2.0))

    async def _process(
        self, channel: AbstractChannel, messages: list[AbstractIncomingMessage], lost: asyncio.Event
    ) -> None:
        decoded: list[tuple[AbstractIncomingMessage, event_pb2.Event]] = []
        for message in messages:
            try:
                decoded.append((message, event_pb2.Event.FromString(message.body)))
            except DecodeError:
                await self._dead_letter(channel, message, "not a finmesh.common.v1.Event")
        if not decoded:
            return
        described = [(m.exchange or "", m.message_id or "", m.delivery_tag or 0, m.headers or {}) for m, _ in decoded]
        with process_span(f"{self.broker.prefix}.{self.consumer}", described):
            outcomes = await self._outcomes([event for _, event in decoded], lost)
        if outcomes is None:
            return  # the connection went while the database was down: the broker delivers them again
        if all(outcome.taken for outcome in outcomes):
            # One frame for the batch: every earlier delivery on this channel is settled already (acked, dead-
            # lettered or requeued in an earlier batch); later ones wait in the inbox with higher tags.
            await max(decoded, key=lambda pair: pair[0].delivery_tag or 0)[0].ack(multiple=True)
            self.acked += len(decoded)
            return
        for (message, _), outcome in zip(decoded, outcomes, strict=True):
            if outcome.taken:
                await message.ack()
                self.acked += 1
            elif outcome.deferred:
                await message.nack(requeue=True)
            else:
                await self._dead_letter(channel, message, outcome.error)

    async def _outcomes(self, events: list[event_pb2.Event], lost: asyncio.Event) -> Sequence[BatchOutcome] | None:
        failures = 0
        while True:
            try:
                outcomes = await self._handle(events)
                if len(outcomes) != len(events):
                    raise ValueError(f"{len(outcomes)} outcomes for {len(events)} events")
                return outcomes
            except Exception as error:  # noqa: BLE001 - a failed handler is retried, split or requeued, never fatal
                if is_transient(error):
                    if lost.is_set():
                        return None
                    if not failures:
                        _log.warning("events_handle_unavailable", consumer=self.consumer, error=type(error).__name__)
                    await asyncio.sleep(self._backoff.delay(failures))
                    failures += 1
                    continue
                _log.warning(
                    "events_handle_failed", consumer=self.consumer, events=len(events), error=type(error).__name__
                )
                if len(events) == 1:
                    return [_RETRY]  # requeued: the broker counts the delivery and dead-letters past the limit
                return await self._one_by_one(events, lost)

    async def _one_by_one(self, events: list[event_pb2.Event], lost: asyncio.Event) -> list[BatchOutcome] | None:
        """Each event alone; once one of an aggregate is not taken, that aggregate's later ones wait (requeued)."""
        outcomes: list[BatchOutcome] = []
        stopped: set[tuple[str, str]] = set()
        for event in events:
            aggregate = (event.source, event.aggregate_id)
            if aggregate in stopped:
                outcomes.append(_RETRY)
                continue
            single = await self._outcomes([event], lost)
            if single is None:
                return None
            outcomes.append(single[0])
            if not single[0].taken:
                stopped.add(aggregate)
        return outcomes

    async def _dead_letter(self, channel: AbstractChannel, message: AbstractIncomingMessage, reason: str) -> None:
        """A copy with the reason to the consumer's dead letters (confirmed), then the ack of the original."""
        headers = dict(message.headers or {})
        headers[HEADER_ERROR] = reason[:500]
        headers.setdefault(HEADER_QUEUE, _queue_of(message, self.broker, self.consumer))
        copy = copy_of(message, headers)
        exchange = await channel.get_exchange(self.broker.dead_letter_exchange(self.consumer), ensure=False)
        await exchange.publish(copy, routing_key=message.routing_key or "")
        await message.ack()
        self.dead_lettered += 1
        _log.warning(
            "event_dead_lettered",
            consumer=self.consumer,
            message_id=message.message_id,
            type=message.type,
            why=reason[:200],
        )


def _queue_of(message: AbstractIncomingMessage, broker: Broker, consumer: str) -> str:
    """The partition queue a message came from: its routing key starts with the partition number."""
    partition = (message.routing_key or "0").split(".", 1)[0]
    return broker.queue(consumer, int(partition) if partition.isdigit() else 0)


async def _gather(
    first: AbstractIncomingMessage, inbox: asyncio.Queue[AbstractIncomingMessage], most: int
) -> list[AbstractIncomingMessage]:
    """`first` and what arrives right behind it: a burst comes in one frame after another, each handed over by
    a task of its own, so a batch taken at the first message would hold one or two and cost a transaction each.
    Lets the loop run while the inbox still grows (never waits on an idle broker)."""
    batch = [first]
    while len(batch) < most:
        while not inbox.empty() and len(batch) < most:
            batch.append(inbox.get_nowait())
        await asyncio.sleep(0)
        if inbox.empty():
            await asyncio.sleep(0)
            if inbox.empty():
                break
    return batch


async def _next(inbox: asyncio.Queue[AbstractIncomingMessage], lost: asyncio.Event) -> AbstractIncomingMessage | None:
    """The next message, or None once the connection is lost."""
    if not inbox.empty():
        return inbox.get_nowait()
    get = asyncio.ensure_future(inbox.get())
    gone = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not get.done():
            get.cancel()
    return get.result() if get.done() and not get.cancelled() else None


def consume(settings_or_broker: Any, queue_name: str, bindings: Sequence[Binding], handle: Handle) -> EventConsumer:
    """Start consuming `queue_name`'s queues (see the package docstring); returns the running consumer."""
    broker = settings_or_broker if isinstance(settings_or_broker, Broker) else Broker.from_settings(settings_or_broker)
    consumer = EventConsumer(broker, queue_name, bindings, handle)
    consumer.start()
    return consumer


__all__ = ["Binding", "EventConsumer", "Handle", "consume"]
