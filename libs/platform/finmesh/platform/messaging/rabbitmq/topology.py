"""The broker's names and shapes: exchanges per producer, partitioned quorum queues per consumer, dead letters.

- `<prefix>.<producer>.events`: a durable topic exchange per producer; routing key `<partition>.<event_type>`,
  the partition being crc32(aggregate_id) mod `partitions`, so an aggregate's events always take one queue.
- `<prefix>.<consumer>.<partition>`: a consumer's durable quorum queues, one per partition, each with a single
  active consumer (the other replicas stand by), bound to the producers' exchanges with `<partition>.<pattern>`
  for each event-type pattern the consumer asked for. A message delivered `max_deliveries` times without an ack
  is dead-lettered by the broker (x-delivery-limit).
- `<prefix>.<consumer>.dlx` (fanout) and `<prefix>.<consumer>.dead` (quorum queue): the consumer's dead letters,
  listed and redriven by `finmesh outbox --consumer <name> list|redrive --broker`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from yarl import URL

from finmesh.platform.config import ServiceSettings

# Who a message is for and why it is dead: set on the copies the consumer dead-letters itself.
HEADER_QUEUE = "x-finmesh-queue"
HEADER_ERROR = "x-finmesh-error"
CONTENT_TYPE = "application/x-protobuf; messageType=finmesh.common.v1.Event"


@dataclass(frozen=True)
class Broker:
    """Where the broker is and how the mesh names things on it (from ServiceSettings.events_* / rabbitmq_*)."""

    url: str
    prefix: str = "finmesh"
    partitions: int = 1
    max_deliveries: int = 5
    prefetch: int = 200

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Broker:
        return cls(
            url=with_vhost(settings.rabbitmq_url.get_secret_value(), settings.rabbitmq_vhost),
            prefix=settings.events_exchange_prefix,
            partitions=settings.events_partitions,
            max_deliveries=settings.events_max_deliveries,
            prefetch=settings.events_prefetch,
        )

    def exchange(self, producer: str) -> str:
        return f"{self.prefix}.{producer}.events"

    def queue(self, consumer: str, partition: int) -> str:
        return f"{self.prefix}.{consumer}.{partition}"

    def dead_letter_exchange(self, consumer: str) -> str:
        return f"{self.prefix}.{consumer}.dlx"

    def dead_letter_queue(self, consumer: str) -> str:
        return f"{self.prefix}.{consumer}.dead"

    def partition(self, aggregate_id: str) -> int:
        return zlib.crc32(aggregate_id.encode()) % self.partitions

    def routing_key(self, aggregate_id: str, event_type: str) -> str:
        return f"{self.partition(aggregate_id)}.{event_type}"

    @property
    def where(self) -> str:
        """The broker for logs and errors: host, port and vhost, never the credentials."""
        return redacted(self.url)

    async def connect(self, timeout: float = 5.0) -> aio_pika.abc.AbstractConnection:
        """A plain (not robust) connection: the publisher and the consumer decide themselves when to reconnect,
        so a delivery tag is never acknowledged on a channel other than the one that received it."""
        return await aio_pika.connect(self.url, timeout=timeout)


def with_vhost(url: str, vhost: str) -> str:
    """`url` on virtual host `vhost` (unchanged when empty); a short heartbeat unless the URL sets one, so a
    dead connection is noticed within seconds rather than minutes."""
    parsed = URL(url)
    if vhost:
        parsed = parsed.with_path("/" + vhost)
    if "heartbeat" not in parsed.query:
        parsed = parsed.update_query(heartbeat="10")
    return str(parsed)


def redacted(url: str) -> str:
    parsed = URL(url)
    vhost = parsed.path[1:] or "/"
    return f"{parsed.scheme}://{parsed.host}:{parsed.port} vhost {vhost}"


async def declare_exchange(channel: AbstractChannel, broker: Broker, producer: str) -> aio_pika.abc.AbstractExchange:
    return await channel.declare_exchange(broker.exchange(producer), aio_pika.ExchangeType.TOPIC, durable=True)


def queue_arguments(broker: Broker, consumer: str) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-delivery-limit": broker.max_deliveries,
        "x-dead-letter-exchange": broker.dead_letter_exchange(consumer),
        # At-least-once dead-lettering (RabbitMQ 3.10+): the broker keeps a dead letter until the DLQ has it.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare_consumer(
    channel: AbstractChannel, broker: Broker, consumer: str, bindings: Sequence[tuple[str, str]]
) -> list[AbstractQueue]:
    """Declare (idempotently) the consumer's dead letters, its partition queues and their bindings.

    `bindings` are (producer, event-type pattern) pairs: ("payments", "#"), ("identity", "identity.user.*.v1").
    """
    dlx = await channel.declare_exchange(
        broker.dead_letter_exchange(consumer), aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        broker.dead_letter_queue(consumer), durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx)
    exchanges = {producer: await declare_exchange(channel, broker, producer) for producer, _ in bindings}
    queues = []
    for partition in range(broker.partitions):
        queue = await channel.declare_queue(
            broker.queue(consumer, partition), durable=True, arguments=queue_arguments(broker, consumer)
        )
        for producer, pattern in bindings:
            await queue.bind(exchanges[producer], routing_key=f"{partition}.{pattern}")
        queues.append(queue)
    return queues


def copy_of(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """The same event, persistent, with `headers`: what a dead-lettering and a redrive publish again."""
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
        app_id=message.app_id,
        timestamp=message.timestamp,
    )
