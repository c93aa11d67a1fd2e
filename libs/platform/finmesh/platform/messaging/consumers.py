"""A producer's event consumers, from configuration: one relay per consumer, each with its own delivery state.

FINMESH_EVENTS_CONSUMERS names them (`notify,risk`); each one's target is its `<name>_target` setting
(FINMESH_RISK_TARGET), or FINMESH_EVENTS_CONSUMER_TARGETS (`audit=audit:50060`) for a consumer the settings
have no field for; FINMESH_EVENTS_FILTERS narrows the event types one takes (`risk=identity.user.*`). Notify
is served through its own NotifyService contract and takes every event; every other consumer through
finmesh.common.v1.EventIntakeService. So adding a consumer is configuration at the producers and the intake
at the consumer: no producer code.

On FINMESH_EVENTS_TRANSPORT=rabbitmq the broker fans out instead: the producer runs one relay, publishing to
its exchange (finmesh.platform.messaging.rabbitmq), and each consumer binds its own queues to the types it
takes (its bindings, in the consumer's code or settings); the consumer list here is then not read.

Why a relay per consumer and not one relay calling each: a consumer that is down or slow would hold back
the others (a relay round waits for its sink), and a retry to one would resend to all. Each relay has its own
claims, leases, backoff and dead letters (finmesh.platform.messaging.fanout keeps their state).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.messaging.event_sink import (
    INTAKE_IDEMPOTENT_METHODS,
    NOTIFY_IDEMPOTENT_METHODS,
    IntakeEventSink,
    NotifyEventSink,
)
from finmesh.platform.messaging.fanout import ROW_CONSUMER, FanOut, fanout_tables_of
from finmesh.platform.messaging.rabbitmq.publisher import RabbitEventSink
from finmesh.platform.messaging.rabbitmq.topology import Broker
from finmesh.platform.messaging.relay import OutboxRelay, RelayPolicy
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread

_log = get_logger("finmesh.outbox")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# `*`, a dotted type, or a dotted prefix ending in `.*` (the patterns notify's webhooks take).
_TYPE = re.compile(r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$")

# Opens a channel to a target, retrying the given idempotent methods (finmesh.platform.rpc.channels.open_channel
# with the service's own settings and token source).
OpenChannel = Callable[[str, list[tuple[str, str]]], grpc.aio.Channel]


@dataclass(frozen=True)
class Consumer:
    name: str
    target: str
    # Event type patterns it takes; empty: every type.
    event_types: tuple[str, ...] = ()


def consumers_of(settings: Any) -> list[Consumer]:
    """The configured consumers, in order; ValueError naming the setting when one is malformed.

    A consumer whose target is not configured is left out (logged): local runs and tests start a producer
    without every other service, as they always started risk without notify."""
    names = [n.strip() for n in settings.events_consumers.split(",") if n.strip()]
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"FINMESH_EVENTS_CONSUMERS: {name!r} is not a consumer name")
    if len(set(names)) != len(names):
        raise ValueError("FINMESH_EVENTS_CONSUMERS names a consumer twice")
    filters = _pairs(settings.events_filters, "FINMESH_EVENTS_FILTERS", ";")
    targets = _pairs(settings.events_consumer_targets, "FINMESH_EVENTS_CONSUMER_TARGETS", ",")
    for name in (*filters, *targets):
        if name not in names:
            raise ValueError(f"{name!r} has a filter or target but is not in FINMESH_EVENTS_CONSUMERS")
    found = []
    for name in names:
        types = tuple(t.strip() for t in filters.get(name, "").split("|") if t.strip())
        for pattern in types:
            if not _TYPE.match(pattern):
                raise ValueError(f"FINMESH_EVENTS_FILTERS: {pattern!r} is not an event type or prefix.*")
        if name == ROW_CONSUMER and types:
            raise ValueError("FINMESH_EVENTS_FILTERS: notify takes every event (its own plans decide what it sends)")
        target = targets.get(name) or str(getattr(settings, f"{name}_target", "") or "")
        if not target:
            _log.warning("events_consumer_without_target", consumer=name, why="its events wait in the outbox")
            continue
        found.append(Consumer(name, target, types))
    return found


def _pairs(text: str, setting: str, separator: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in text.split(separator):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ValueError(f"{setting}: {part.strip()!r} is not name=value")
        pairs[name.strip()] = value.strip()
    return pairs


@dataclass
class EventRelays:
    """A producer's relays, one per consumer; started, woken and stopped together."""

    relays: list[OutboxRelay] = field(default_factory=list)
    # The relays' sinks, closed with them (the broker's publisher holds a connection).
    sinks: list[Any] = field(default_factory=list)
    # The channels opened here for consumers (closed with the relays).
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def of(self, consumer: str) -> OutboxRelay:
        for relay in self.relays:
            if relay.consumer == consumer:
                return relay
        raise KeyError(consumer)

    @property
    def consumers(self) -> list[str]:
        return [relay.consumer for relay in self.relays]

    def start(self) -> None:
        for relay in self.relays:
            relay.start()

    def wake(self) -> None:
        """After a commit that wrote events: every consumer's relay looks now, not at its next poll."""
        for relay in self.relays:
            relay.wake()

    async def stop(self) -> None:
        for relay in self.relays:
            await relay.stop()
        for sink in self.sinks:
            await sink.close()
        self.sinks.clear()
        for channel in self.channels:
            await channel.close()
        self.channels.clear()

    async def drain_once(self) -> int:
        return sum([await relay.drain_once() for relay in self.relays])

    async def pending_count(self) -> int:
        """Events not yet delivered, summed over the consumers (an event two consumers await counts twice)."""
        return sum([await relay.pending_count() for relay in self.relays])


def event_relays(
    engine: AsyncEngine,
    outbox: Table,
    source: str,
    settings: Any,
    open_channel: OpenChannel,
    policy: RelayPolicy,
    *,
    thread: SqliteWriteThread | None = None,
    timeout: float | None = None,
    known: dict[str, grpc.aio.Channel] | None = None,
) -> EventRelays:
    """A relay per configured consumer (consumers_of). `known` reuses channels the service already has open
    (notify's, say) instead of opening a second one to the same target."""
    group = EventRelays()
    if getattr(settings, "events_transport", "grpc") == "rabbitmq":
        publisher = RabbitEventSink(Broker.from_settings(settings), source)
        group.sinks.append(publisher)
        group.relays.append(
            OutboxRelay(engine, outbox, source, publisher.deliver, policy, thread=thread, consumer=publisher.name)
        )
        return group
    call_timeout = timeout if timeout is not None else float(settings.call_timeout_seconds)
    for consumer in consumers_of(settings):
        notify = consumer.name == ROW_CONSUMER
        channel = (known or {}).get(consumer.name)
        if channel is None:
            channel = open_channel(consumer.target, NOTIFY_IDEMPOTENT_METHODS if notify else INTAKE_IDEMPOTENT_METHODS)
            group.channels.append(channel)
        if notify:
            sink: Any = NotifyEventSink(channel, call_timeout)
            fan_out = None
        else:
            sink = IntakeEventSink(channel, consumer.name, call_timeout)
            fan_out = _fan_out(outbox, consumer)
        group.relays.append(
            OutboxRelay(
                engine, outbox, source, sink.deliver, policy, thread=thread, consumer=consumer.name, fan_out=fan_out
            )
        )
    return group


def _fan_out(outbox: Table, consumer: Consumer) -> FanOut:
    tables = fanout_tables_of(outbox)
    if tables is None:
        raise ValueError(f"consumer {consumer.name!r}: this service's schema has no outbox_deliveries table")
    deliveries, cursors = tables
    return FanOut(outbox, deliveries, cursors, consumer.name, consumer.event_types)
