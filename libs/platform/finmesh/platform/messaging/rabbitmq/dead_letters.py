"""A consumer's dead letters on the broker, for the operator (`finmesh outbox --consumer NAME list|redrive --broker`).

Listing reads the dead-letter queue without consuming it (the messages are taken unacknowledged, then given
back). Redriving sends each chosen message back to the consumer's own partition queue it died in (through the
default exchange: only this consumer gets it again, not every consumer bound to the producer), waits for the
broker's confirm, and only then removes it from the dead letters. The consumer's dedupe makes a redriven
event that had in fact been applied a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pamqp import commands as spec

from finmesh.platform.messaging.rabbitmq.topology import HEADER_ERROR, HEADER_QUEUE, Broker, copy_of

# Messages looked at per command at most (the DLQ is walked in one channel, every message held until the end).
WALK_LIMIT = 10_000


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    event_type: str
    producer: str
    queue: str
    reason: str
    deliveries: int


def _header(message: AbstractIncomingMessage, key: str) -> str:
    value = (message.headers or {}).get(key, "")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def describe(message: AbstractIncomingMessage, broker: Broker, consumer: str) -> DeadLetter:
    """Why a message is dead: the reason the consumer gave, or the broker's (x-death: delivery_limit, ...)."""
    reason = _header(message, HEADER_ERROR)
    deaths: Any = (message.headers or {}).get("x-death") or []
    queue = _header(message, HEADER_QUEUE)
    deliveries = 0
    if deaths and isinstance(deaths, list) and isinstance(deaths[0], dict):
        death = deaths[0]
        reason = reason or f"broker: {death.get('reason', '')}"
        queue = queue or str(death.get("queue", ""))
        deliveries = int(death.get("count", 0) or 0)
    return DeadLetter(
        message_id=message.message_id or "",
        event_type=message.type or "",
        producer=message.app_id or "",
        queue=queue or broker.queue(consumer, 0),
        reason=reason,
        deliveries=deliveries,
    )


async def list_dead_letters(broker: Broker, consumer: str, *, limit: int = 100) -> list[DeadLetter]:
    connection = await broker.connect()
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(broker.dead_letter_queue(consumer), passive=True)
        found: list[DeadLetter] = []
        while len(found) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            found.append(describe(message, broker, consumer))
        # Closing the channel gives every message back, unacknowledged: listing changes nothing.
        await channel.close()
        return found
    finally:
        await connection.close()


async def redrive_dead_letters(broker: Broker, consumer: str, message_ids: Sequence[str] | None = None) -> int:
    """Send dead letters (the given message ids, or all when None) back to their queue; return how many."""
    wanted = None if message_ids is None else set(message_ids)
    connection = await broker.connect()
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(broker.dead_letter_queue(consumer), passive=True)
        redriven = 0
        # Only the letters there now: one still poisonous comes back while we walk, and must wait for the next
        # command rather than go round again.
        there = int(queue.declaration_result.message_count or 0)
        for _ in range(min(there, WALK_LIMIT)):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            if wanted is not None and message.message_id not in wanted:
                continue  # held unacknowledged until the channel closes, so the walk never meets it twice
            dead = describe(message, broker, consumer)
            headers = {k: v for k, v in (message.headers or {}).items() if k not in (HEADER_ERROR, "x-death")}
            headers["x-finmesh-redriven"] = True
            result = await channel.default_exchange.publish(copy_of(message, headers), routing_key=dead.queue)
            if not isinstance(result, spec.Basic.Ack):
                # Returned (no such queue) or refused: it stays a dead letter.
                raise RuntimeError(f"queue {dead.queue} did not take {message.message_id}; it stays dead")
            await message.ack()
            redriven += 1
        await channel.close()
        return redriven
    finally:
        await connection.close()
