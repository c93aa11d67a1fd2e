"""Transactional outbox: events written with the change they describe, relayed in order per aggregate."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from opentelemetry import trace
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
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.common.v1 import event_pb2
from finmesh.platform.logs import get_logger
from finmesh.platform.telemetry import extract_context, inject_context

_log = get_logger("finmesh.outbox")
_tracer = trace.get_tracer("finmesh.outbox")


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
        Column("next_attempt_at", DateTime(timezone=True), nullable=False),
        Column("last_error", String(500), nullable=False, default=""),
        Column("dead", Boolean, nullable=False, default=False),
        UniqueConstraint("aggregate_id", "sequence", name="uq_outbox_aggregate_sequence"),
        Index("ix_outbox_pending", "delivered_at", "dead", "id"),
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


def _to_struct(payload: dict[str, Any]) -> struct_pb2.Struct:
    # Struct numbers are doubles: integers (money!) travel as decimal strings.
    def plain(value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    struct = struct_pb2.Struct()
    struct.update(plain(payload))
    return struct


def row_to_event(row: Any, source: str) -> event_pb2.Event:
    occurred = timestamp_pb2.Timestamp()
    occurred.FromDatetime(_aware(row.occurred_at))
    return event_pb2.Event(
        event_id=row.event_id,
        source=source,
        event_type=row.event_type,
        aggregate_id=row.aggregate_id,
        sequence=row.sequence,
        occurred_at=occurred,
        payload=_to_struct(row.payload),
        traceparent=row.traceparent,
        tracestate=row.tracestate,
        user_id=row.user_id,
    )


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; every time we store is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RelayPolicy:
    batch_size: int = 200
    poll_interval_seconds: float = 0.5
    max_attempts: int = 25
    base_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 60.0
    concurrency: int = 16

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with full jitter (attempts counts failures so far)."""
        ceiling = min(self.max_backoff_seconds, self.base_backoff_seconds * 2 ** min(attempts, 30))
        return random.uniform(ceiling / 2, ceiling)


Deliver = Callable[[event_pb2.Event], Awaitable[None]]


class OutboxRelay:
    """Delivers pending outbox events through `deliver`, in order per aggregate, at least once."""

    def __init__(self, engine: AsyncEngine, table: Table, source: str, deliver: Deliver,
                 policy: RelayPolicy | None = None) -> None:
        self._engine = engine
        self._table = table
        self._source = source
        self._deliver = deliver
        self._policy = policy or RelayPolicy()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._source}-outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """Called after a commit that wrote events, so delivery does not wait for the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                handled = await self.drain_once()
            except Exception:  # noqa: BLE001 - the relay must outlive a database hiccup
                _log.exception("outbox_drain_failed")
                handled = 0
            if handled:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._policy.poll_interval_seconds)

    async def drain_once(self) -> int:
        """Try every due event once; return how many were delivered."""
        t = self._table
        now = datetime.now(UTC)
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(t)
                    .where(t.c.delivered_at.is_(None), t.c.dead.is_(False))
                    .order_by(t.c.id)
                    .limit(self._policy.batch_size)
                )
            ).all()
            await conn.rollback()
        by_aggregate: dict[str, list[Any]] = {}
        for row in rows:
            by_aggregate.setdefault(row.aggregate_id, []).append(row)
        gate = asyncio.Semaphore(self._policy.concurrency)

        async def one_aggregate(events: list[Any]) -> int:
            async with gate:
                done = 0
                for row in events:
                    # An earlier event of this aggregate not yet delivered blocks the later ones.
                    if _aware(row.next_attempt_at) > now or not await self._deliver_one(row):
                        break
                    done += 1
                return done

        return sum(await asyncio.gather(*(one_aggregate(events) for events in by_aggregate.values())))

    async def _deliver_one(self, row: Any) -> bool:
        t = self._table
        parent = extract_context({"traceparent": row.traceparent, "tracestate": row.tracestate})
        with _tracer.start_as_current_span(
            f"{row.event_type} send",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "finmesh.outbox",
                "messaging.operation.type": "send",
                "messaging.destination.name": "notify",
                "messaging.message.id": row.event_id,
            },
        ) as span:
            try:
                await self._deliver(row_to_event(row, self._source))
            except Exception as exc:  # noqa: BLE001 - any failure is retried later
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                await self._record_failure(row, exc)
                return False
        async with self._engine.begin() as conn:
            await conn.execute(update(t).where(t.c.id == row.id).values(delivered_at=datetime.now(UTC)))
        return True

    async def _record_failure(self, row: Any, exc: Exception) -> None:
        t = self._table
        attempts = row.attempts + 1
        dead = attempts >= self._policy.max_attempts
        retry_at = datetime.now(UTC) + timedelta(seconds=self._policy.backoff(row.attempts))
        _log.warning("outbox_delivery_failed", event_id=row.event_id, attempts=attempts, dead=dead,
                     error=type(exc).__name__)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t)
                .where(t.c.id == row.id)
                .values(attempts=attempts, dead=dead, next_attempt_at=retry_at, last_error=str(exc)[:500])
            )

    async def redrive(self, event_id: str) -> bool:
        """Put a dead event back in line (after an operator fixed the cause)."""
        t = self._table
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(t)
                .where(t.c.event_id == event_id, t.c.dead.is_(True))
                .values(dead=False, attempts=0, next_attempt_at=datetime.now(UTC))
            )
        self.wake()
        return bool(result.rowcount)

    async def pending_count(self) -> int:
        t = self._table
        async with self._engine.connect() as conn:
            count = await conn.scalar(select(func.count()).where(t.c.delivered_at.is_(None)))
            await conn.rollback()
        return int(count or 0)
