"""Transactional outbox: events written with the change they describe, in the same transaction.

A producer writes an event with enqueue() in the transaction that makes the
change it describes, so the event exists exactly when the change does. The
relay (finmesh.platform.messaging.relay) delivers them later, at least once
and in order per aggregate; finmesh.platform.messaging.outbox_admin holds the
operator's tools (`finmesh outbox`). row_to_event is the one wire form of a
stored event, for the relay and for anyone replaying rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.common.v1 import event_pb2
from finmesh.platform.observability.telemetry import inject_context
from finmesh.platform.storage.db import aware


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("event_type", String(100), nullable=False),
        Column("aggregate_id", String(64), nullable=False),
        Column("sequence", BigInteger, nullable=False),
        Column("user_id", String(64), nullable=False, default=""),
        Column("payload", JSON, nullable=False),
        Column("traceparent", String(64), nullable=False, default=""),
        Column("tracestate", String(512), nullable=False, default=""),
        Column("occurred_at", DateTime(timezone=True), nullable=False),
        Column("delivered_at", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer, nullable=False, default=0),
        # Doubles as the claim lease: a relay that takes an event pushes it
        # into the future, so other replicas see it (and its aggregate) as busy.
        Column("next_attempt_at", DateTime(timezone=True), nullable=False),
        Column("last_error", String(500), nullable=False, default=""),
        Column("dead", Boolean, nullable=False, default=False),
        UniqueConstraint("aggregate_id", "sequence", name="uq_outbox_aggregate_sequence"),
        Index("ix_outbox_pending", "delivered_at", "dead", "id"),
        # The claim's head check asks for an aggregate's earlier undelivered events: through the unique
        # (aggregate_id, sequence) key it walked the aggregate's whole history, delivered events included, so a
        # busy account's claims slowed down as it aged. Here it reads the undelivered ones only.
        Index("ix_outbox_aggregate_pending", "aggregate_id", "delivered_at", "dead", "sequence"),
    )


async def enqueue(
    conn: AsyncConnection,
    table: Table,
    *,
    event_type: str,
    aggregate_id: str,
    payload: dict[str, Any],
    user_id: str = "",
) -> str:
    """Write an event in the caller's transaction and return its id.

    The caller must already hold a lock on the aggregate (for example the
    account row it updated), so sequence numbers and ids follow commit order.
    """
    last = await conn.scalar(select(func.max(table.c.sequence)).where(table.c.aggregate_id == aggregate_id))
    carrier = inject_context()
    now = datetime.now(UTC)
    event_id = str(uuid.uuid4())
    await conn.execute(
        insert(table).values(
            event_id=event_id,
            event_type=event_type,
            aggregate_id=aggregate_id,
            sequence=(last or 0) + 1,
            user_id=user_id,
            payload=payload,
            traceparent=carrier.get("traceparent", ""),
            tracestate=carrier.get("tracestate", ""),
            occurred_at=now,
            next_attempt_at=now,
            attempts=0,
            last_error="",
            dead=False,
        )
    )
    return event_id


def _plain(value: Any) -> Any:
    # Struct numbers are doubles: integers (money!) travel as decimal strings.
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _fill_struct(struct: struct_pb2.Struct, payload: dict[str, Any]) -> None:
    """struct.update(_plain(payload)), with flat text and flags set directly: Struct.update goes through
    Python per value, and every relayed event pays it."""
    fields = struct.fields
    nested = {}
    for key, value in payload.items():
        if isinstance(value, str):
            fields[key].string_value = value
        elif isinstance(value, bool):
            fields[key].bool_value = value
        elif isinstance(value, int):
            fields[key].string_value = str(value)
        else:
            nested[key] = _plain(value)
    if nested:
        struct.update(nested)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def row_to_event(row: Any, source: str) -> event_pb2.Event:
    event = event_pb2.Event(
        event_id=row.event_id,
        source=source,
        event_type=row.event_type,
        aggregate_id=row.aggregate_id,
        sequence=row.sequence,
        traceparent=row.traceparent,
        tracestate=row.tracestate,
        user_id=row.user_id,
    )
    # Timestamp.FromDatetime, without its time-tuple round trip (exact: whole microseconds).
    since = aware(row.occurred_at) - _EPOCH
    event.occurred_at.seconds = since.days * 86_400 + since.seconds
    event.occurred_at.nanos = since.microseconds * 1_000
    _fill_struct(event.payload, row.payload)
    return event
