"""The outbox relay: delivers stored events to their consumer, in order per aggregate, at least once.

Delivery is at least once (consumers dedupe on event_id). A relay claims the
head run of each aggregate with a short lease, so several replicas never send
the same event at the same time, and never send a later event of an aggregate
before an earlier one. An event that keeps failing is parked (`dead`) after
RelayPolicy.max_attempts; finmesh.platform.messaging.outbox_admin has the
operator's tools to list and redrive them.

A sink that offers `deliver_batch` gets each round's claimed runs in one call
(each run contiguous and in sequence order); per-event outcomes let one refused
event stop only its own aggregate. Sinks without it, and consumers too old to
take batches, get one call per event. Each send is a PRODUCER span that
continues the trace that wrote the event.

The relay also samples its outbox for the metrics (finmesh.platform.messaging.outbox_metrics) every
RelayPolicy.metrics_sample_seconds, between rounds: every service with an outbox reports its backlog
without wiring of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from sqlalchemy import Table, bindparam, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.common.v1 import event_pb2
from finmesh.platform.backoff import Backoff
from finmesh.platform.messaging import outbox_metrics
from finmesh.platform.messaging.fanout import ROW_CONSUMER, FanOut
from finmesh.platform.messaging.outbox import row_to_event
from finmesh.platform.messaging.outbox_admin import redrive_dead
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.telemetry import extract_context
from finmesh.platform.storage.db import is_transient
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread, write_transaction

T = TypeVar("T")

_log = get_logger("finmesh.outbox")
_tracer = trace.get_tracer("finmesh.outbox")


class SinkUnavailable(Exception):
    """The destination as a whole is unreachable (not this event's fault).

    Such failures do not count toward an event's dead-letter attempts: a
    consumer that is down for an hour must not bury every event in the dead
    letters. The relay instead pauses as a whole and probes with backoff.
    """


def _sink_is_down(exc: BaseException) -> bool:
    if isinstance(exc, (SinkUnavailable, ConnectionError)):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


@dataclass(frozen=True)
class RelayPolicy:
    batch_size: int = 200
    poll_interval_seconds: float = 0.5
    # Failures of one event (the consumer refused or timed out on it) before it is parked as dead.
    max_attempts: int = 25
    base_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 300.0
    concurrency: int = 16
    # How long a claimed run of events stays reserved for one relay replica;
    # a crashed replica's claims come free after this.
    lease_seconds: float = 10.0
    # While the consumer is down, probe it at least this often.
    max_probe_interval_seconds: float = 5.0
    # How often the backlog gauges are sampled (ServiceSettings.metrics_sample_seconds; 0: never). Rounds come
    # at least every max_probe_interval_seconds, so a sample is at most that much late.
    metrics_sample_seconds: float = 15.0

    def backoff(self, attempts: int) -> float:
        """The wait before an event's next try (`attempts` counts its failures so far)."""
        return Backoff(self.base_backoff_seconds, self.max_backoff_seconds).delay(attempts)

    def probe_delay(self, outages: int) -> float:
        """The wait before probing a consumer that was down `outages` rounds in a row."""
        return Backoff(self.base_backoff_seconds, self.max_probe_interval_seconds).delay(outages)


Deliver = Callable[[event_pb2.Event], Awaitable[None]]


@dataclass(frozen=True)
class BatchOutcome:
    """The consumer's answer for one event of a batch: taken (new or a duplicate), or not, and why."""

    taken: bool
    error: str = ""
    # Not taken only because an earlier event of its aggregate in the batch was refused.
    deferred: bool = False


DeliverBatch = Callable[[Sequence[event_pb2.Event]], Awaitable[Sequence[BatchOutcome]]]


class BatchUnsupported(Exception):
    """The consumer has no batch delivery (an older version): send one event per call for a while."""


class EventRefused(Exception):
    """The consumer refused one event of a batch (recorded as that event's failed attempt)."""


# After an older consumer said it cannot take batches, ask again this often (a rollout may have reached it).
BATCH_REPROBE_SECONDS = 60.0


# The columns a relay reads of a claimed event: what the consumer gets and what a failure updates.
_SENT_COLUMNS = (
    "id",
    "event_id",
    "event_type",
    "aggregate_id",
    "sequence",
    "user_id",
    "payload",
    "traceparent",
    "tracestate",
    "occurred_at",
    "attempts",
)


class _RelayStatements:
    """A relay's statements, built once per table: building a SELECT with a WHERE clause (and its cache key)
    costs more CPU than SQLite takes to run it, and every round runs five of them.

    Notify's relay keeps its delivery state on the outbox row itself; any other consumer's relay on its rows
    in outbox_deliveries (finmesh.platform.messaging.fanout), joined to the outbox for what it sends. The
    statements are the same but for the table they claim and mark, keyed by the outbox id either way."""

    def __init__(self, t: Table, batch_size: int, fan_out: FanOut | None = None) -> None:
        s = fan_out.deliveries if fan_out is not None else t
        key = s.c.outbox_id if fan_out is not None else t.c.id
        mine = (s.c.consumer == fan_out.consumer,) if fan_out is not None else ()
        live = (*mine, s.c.delivered_at.is_(None), s.c.dead.is_(False))
        due = (*live, s.c.next_attempt_at <= bindparam("now"))
        earlier = s.alias("earlier")
        same_consumer = (earlier.c.consumer == s.c.consumer,) if fan_out is not None else ()
        is_head = ~exists().where(
            *same_consumer,
            earlier.c.aggregate_id == s.c.aggregate_id,
            earlier.c.sequence < s.c.sequence,
            earlier.c.delivered_at.is_(None),
            earlier.c.dead.is_(False),
        )
        if fan_out is None:
            sent = [t.c[name] for name in _SENT_COLUMNS]
            source: Any = t
        else:
            sent = [t.c[name] for name in _SENT_COLUMNS if name != "attempts"] + [s.c.attempts]
            source = s.join(t, t.c.id == s.c.outbox_id)
        aggregates = s.c.aggregate_id.in_(bindparam("aggregates", expanding=True))
        ids = key.in_(bindparam("ids", expanding=True))

        def heads(limit: int) -> Any:
            return (
                select(*sent)
                .select_from(source)
                .where(*due, is_head)
                .order_by(key)
                .limit(limit)
                .with_for_update(skip_locked=True, of=s)
            )

        # Heads first, so one aggregate stuck in backoff cannot fill the batch and starve the others;
        # while the consumer is down a single head is enough to probe it.
        self.heads = heads(batch_size)
        self.probe_head = heads(1)
        # The heads' aggregates' later due events (the heads themselves are read once, above).
        self.followers = (
            select(*sent)
            .select_from(source)
            .where(*due, aggregates, key.not_in(bindparam("heads", expanding=True)))
            .order_by(key)
            .limit(batch_size)
            .with_for_update(skip_locked=True, of=s)
        )
        self.pending = (
            select(key.label("id"), s.c.aggregate_id)
            .where(*live, aggregates, key <= bindparam("last_id"))
            .order_by(key)
        )
        self.lease = update(s).where(*mine, ids).values(next_attempt_at=bindparam("until"))
        self.release = update(s).where(ids, *live).values(next_attempt_at=bindparam("at"))
        self.mark_delivered = update(s).where(*mine, ids).values(delivered_at=bindparam("at"))
        self.record_failure = (
            update(s)
            .where(*mine, key == bindparam("b_id"))
            .values(
                attempts=bindparam("b_attempts"),
                dead=bindparam("b_dead"),
                next_attempt_at=bindparam("b_retry_at"),
                last_error=bindparam("b_last_error"),
            )
        )
        self.pending_count = select(func.count()).select_from(s).where(*mine, s.c.delivered_at.is_(None))


class OutboxRelay:
    """Delivers pending outbox events through `deliver`, in order per aggregate, at least once."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        source: str,
        deliver: Deliver,
        policy: RelayPolicy | None = None,
        *,
        deliver_batch: DeliverBatch | None = None,
        thread: SqliteWriteThread | None = None,
        consumer: str = ROW_CONSUMER,
        fan_out: FanOut | None = None,
    ) -> None:
        self._engine = engine
        # On an SQLite file, the service's write thread (finmesh.platform.storage.sqlite_thread) runs the relay's
        # transactions too: a hand-off per transaction instead of a greenlet and a hop per statement.
        self._thread = thread
        self._table = table
        self._source = source
        self._deliver = deliver
        # Services wire a sink's bound `deliver`; a sink that also offers `deliver_batch` (NotifyEventSink)
        # gets a round's events in one call without their wiring changing.
        self._deliver_batch = deliver_batch or getattr(getattr(deliver, "__self__", None), "deliver_batch", None)
        self._batch_off_until = 0.0
        self._policy = policy or RelayPolicy()
        # Set for every consumer but notify: its own delivery rows, copied from the outbox each round.
        self._fan_out = fan_out
        self._consumer = fan_out.consumer if fan_out is not None else consumer
        self._sql = _RelayStatements(table, self._policy.batch_size, fan_out)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Consecutive rounds in which the consumer was unreachable.
        self._outages = 0
        self._held: set[int] = set()
        # The consumer the backlog gauges are labelled with (outbox_metrics), and when they are due next.
        self._sampler = outbox_metrics.OutboxSampler(
            table, self._consumer, fan_out.deliveries if fan_out is not None else None
        )
        self._next_sample = 0.0

    @property
    def policy(self) -> RelayPolicy:
        return self._policy

    @property
    def consumer(self) -> str:
        return self._consumer

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._source}-outbox-relay-{self._consumer}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        # Give back what we claimed but did not finish, so a restart need not wait out the lease.
        with contextlib.suppress(Exception):
            await self._release(sorted(self._held))

    def wake(self) -> None:
        """Called after a commit that wrote events, so delivery does not wait for the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                handled = await self.drain_once()
            except Exception:  # noqa: BLE001 - the relay must outlive a database hiccup
                _log.exception("outbox_drain_failed", source=self._source, consumer=self._consumer)
                handled = 0
            await self._sample_when_due()
            if self._outages:
                # Wakes are ignored while the consumer is down: each commit must not become a probe.
                await asyncio.sleep(self._policy.probe_delay(self._outages))
                continue
            if handled:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._policy.poll_interval_seconds)

    async def _sample_when_due(self) -> None:
        interval = self._policy.metrics_sample_seconds
        now = asyncio.get_running_loop().time()
        if interval <= 0 or now < self._next_sample:
            return
        self._next_sample = now + interval
        try:
            await self.sample_metrics()
        except Exception as exc:  # noqa: BLE001 - a gauge must never stop delivery
            _log.warning("outbox_sample_failed", source=self._source, consumer=self._consumer, error=type(exc).__name__)

    async def sample_metrics(self) -> None:
        """Set the backlog gauges from the outbox now (the relay's loop does it every metrics_sample_seconds)."""
        # A write transaction like the relay's others: on SQLite the writer engine begins IMMEDIATE anyway, and
        # taking turns through the gate keeps the sample from waiting in SQLite's busy handler.
        await self._transaction(self._sampler.sample)

    async def drain_once(self) -> int:
        """Claim due events and try each once, in order per aggregate; return how many were delivered."""
        if self._fan_out is not None:
            await self._transaction(self._fan_out.step)
        runs = await self._claim()
        if not runs:
            return 0
        round_state = _Round(deadline=asyncio.get_running_loop().time() + self._policy.lease_seconds * 0.8)
        delivered_ids: list[int] = []
        try:
            if self._batching():
                await self._deliver_batched(runs, round_state, delivered_ids)
            else:
                await self._deliver_runs(runs, round_state, delivered_ids)
        finally:
            # One transaction marks the round's deliveries, not one per event: on SQLite each commit is a
            # sync to disk that the ledger writer queues behind. Until marked they stay leased, so no relay
            # sends them again unless this one dies first (then the consumer's dedupe takes the repeat).
            await self._mark_delivered(delivered_ids)
        delivered = len(delivered_ids)
        if round_state.sink_down:
            self._outages += 1
        else:
            if self._outages:
                _log.info("outbox_sink_back", source=self._source, consumer=self._consumer, outages=self._outages)
            self._outages = 0
        return delivered

    def _batching(self) -> bool:
        # While the consumer is down a single event probes it, as one call per event always did.
        return (
            self._deliver_batch is not None
            and not self._outages
            and asyncio.get_running_loop().time() >= self._batch_off_until
        )

    async def _deliver_runs(self, runs: list[list[Any]], round_state: _Round, delivered_ids: list[int]) -> None:
        """One call per event, runs side by side, each run in order and stopped by its first failure."""
        # While the consumer is down, one aggregate probes it; the rest wait.
        gate = asyncio.Semaphore(1 if self._outages else self._policy.concurrency)

        async def one_run(run: list[Any]) -> None:
            async with gate:
                for index, row in enumerate(run):
                    if round_state.sink_down or asyncio.get_running_loop().time() > round_state.deadline:
                        await self._release([r.id for r in run[index:]])
                        break
                    outcome = await self._deliver_one(row)
                    if outcome != "delivered":
                        round_state.sink_down |= outcome == "sink_down"
                        await self._release([r.id for r in run[index + 1 :]])
                        break
                    delivered_ids.append(row.id)

        await asyncio.gather(*(one_run(run) for run in runs))

    async def _deliver_batched(self, runs: list[list[Any]], round_state: _Round, delivered_ids: list[int]) -> None:
        """The round's runs in as few calls as the consumer's bound allows, each run whole and in order.

        A refused event stops its aggregate for this round (its failure recorded, its later events given
        back); the other aggregates' events still count as delivered. When the batch call itself fails for a
        reason other than the consumer being down, the rest of the round goes one event per call, so a
        poison event is charged alone instead of every aggregate in its batch."""
        rows = [row for run in runs for row in run]
        stopped: set[str] = set()
        # Events whose fate this round is decided (delivered, failure recorded, or sent one per call);
        # the rest are given back at the end, so the next round (or another replica) can send them.
        settled: set[int] = set()
        try:
            for start in range(0, len(rows), BATCH_LIMIT):
                if round_state.sink_down or asyncio.get_running_loop().time() > round_state.deadline:
                    break
                # An aggregate stopped by a refusal in an earlier chunk sends nothing more this round.
                chunk = [row for row in rows[start : start + BATCH_LIMIT] if row.aggregate_id not in stopped]
                if not chunk:
                    continue
                outcomes = await self._send_batch(chunk, round_state)
                if outcomes is None:
                    if not round_state.sink_down:
                        rest = [row for row in rows[start:] if row.aggregate_id not in stopped]
                        settled.update(row.id for row in rest)
                        await self._deliver_runs(_runs_of(rest), round_state, delivered_ids)
                    break
                for row, outcome in zip(chunk, outcomes, strict=True):
                    if row.aggregate_id in stopped:
                        continue
                    if outcome.taken:
                        delivered_ids.append(row.id)
                        settled.add(row.id)
                        continue
                    stopped.add(row.aggregate_id)
                    if not outcome.deferred:
                        settled.add(row.id)
                        await self._record_failure(row, EventRefused(outcome.error))
        finally:
            await self._release([row.id for row in rows if row.id not in settled])

    async def _send_batch(self, chunk: list[Any], round_state: _Round) -> Sequence[BatchOutcome] | None:
        """The consumer's outcomes for `chunk`, or None when the round must go on without batching."""
        assert self._deliver_batch is not None
        with _batch_span(chunk, self._consumer) as span:
            try:
                outcomes = await self._deliver_batch([row_to_event(row, self._source) for row in chunk])
                if len(outcomes) != len(chunk):
                    raise ValueError(f"{len(outcomes)} outcomes for {len(chunk)} events")
                return outcomes
            except BatchUnsupported:
                _log.info(
                    "outbox_batch_unsupported",
                    source=self._source,
                    consumer=self._consumer,
                    reprobe_s=BATCH_REPROBE_SECONDS,
                )
                self._batch_off_until = asyncio.get_running_loop().time() + BATCH_REPROBE_SECONDS
            except Exception as exc:  # noqa: BLE001 - the round goes on one event per call
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                if _sink_is_down(exc):
                    if not self._outages:
                        _log.warning(
                            "outbox_sink_unavailable",
                            source=self._source,
                            consumer=self._consumer,
                            error=type(exc).__name__,
                        )
                    round_state.sink_down = True
                else:
                    _log.warning(
                        "outbox_batch_failed",
                        source=self._source,
                        consumer=self._consumer,
                        events=len(chunk),
                        error=type(exc).__name__,
                    )
        return None

    async def _transaction(self, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Run `work(conn)` in one write transaction, taking turns with the service's other writers."""
        return await write_transaction(self._thread or self._engine, work)

    async def _claim(self) -> list[list[Any]]:
        """Lease the deliverable head run of each aggregate among the due events.

        FOR UPDATE SKIP LOCKED (PostgreSQL; SQLite serialises writers anyway)
        keeps concurrent claims apart; the head check keeps a replica from
        starting an aggregate in the middle while another holds its head.
        """
        sql, now = self._sql, datetime.now(UTC)
        head_query = sql.probe_head if self._outages else sql.heads

        async def claim(conn: Any) -> list[list[Any]]:
            heads = (await conn.execute(head_query, {"now": now})).all()
            if not heads:
                return []
            aggregates = sorted({row.aggregate_id for row in heads})
            followers = (
                await conn.execute(
                    sql.followers, {"now": now, "aggregates": aggregates, "heads": [row.id for row in heads]}
                )
            ).all()
            candidates = list({row.id: row for row in [*heads, *followers]}.values())
            pending = (
                await conn.execute(
                    sql.pending, {"aggregates": aggregates, "last_id": max(row.id for row in candidates)}
                )
            ).all()
            runs = head_runs(candidates, pending)
            if runs:
                await conn.execute(
                    sql.lease,
                    {
                        "ids": [row.id for run in runs for row in run],
                        "until": now + timedelta(seconds=self._policy.lease_seconds),
                    },
                )
            return runs

        runs = await self._transaction(claim)
        ids = [row.id for run in runs for row in run]
        self._held.update(ids)
        return runs

    async def _release(self, ids: list[int]) -> None:
        if not ids:
            return
        await self._transaction(lambda conn: conn.execute(self._sql.release, {"ids": ids, "at": datetime.now(UTC)}))
        self._held.difference_update(ids)

    async def _deliver_one(self, row: Any) -> str:
        with _batch_span([row], self._consumer) as span:
            try:
                await self._deliver(row_to_event(row, self._source))
            except Exception as exc:  # noqa: BLE001 - any failure is retried later
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                if _sink_is_down(exc):
                    if not self._outages:
                        _log.warning(
                            "outbox_sink_unavailable",
                            source=self._source,
                            consumer=self._consumer,
                            error=type(exc).__name__,
                        )
                    await self._release([row.id])
                    return "sink_down"
                await self._record_failure(row, exc)
                return "failed"
        return "delivered"

    async def _mark_delivered(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        for attempt in (1, 2):
            try:
                await self._transaction(
                    lambda conn: conn.execute(self._sql.mark_delivered, {"ids": row_ids, "at": datetime.now(UTC)})
                )
                break
            except Exception as exc:
                # The consumer has the events: a dropped connection here would leave them (and every later
                # event of their aggregates) leased for lease_seconds and then sent again. One more try on a
                # fresh connection; if that fails too, the lease and the consumer's dedupe take over.
                if attempt == 2 or not is_transient(exc):
                    raise
        self._held.difference_update(row_ids)

    async def _record_failure(self, row: Any, exc: Exception) -> None:
        attempts = row.attempts + 1
        dead = attempts >= self._policy.max_attempts
        retry_at = datetime.now(UTC) + timedelta(seconds=self._policy.backoff(row.attempts))
        _log.warning(
            "outbox_delivery_failed",
            source=self._source,
            consumer=self._consumer,
            event_id=row.event_id,
            attempts=attempts,
            dead=dead,
            error=type(exc).__name__,
        )
        failure = {
            "b_id": row.id,
            "b_attempts": attempts,
            "b_dead": dead,
            "b_retry_at": retry_at,
            "b_last_error": f"{type(exc).__name__}: {exc}"[:500],
        }
        await self._transaction(lambda conn: conn.execute(self._sql.record_failure, failure))
        self._held.discard(row.id)

    async def redrive(self, event_id: str) -> bool:
        """Put a dead event back in line (after an operator fixed the cause)."""
        count = await redrive_dead(self._engine, self._table, [event_id], consumer=self._consumer)
        self.wake()
        return bool(count)

    async def pending_count(self) -> int:
        async with self._engine.connect() as conn:
            count = await conn.scalar(self._sql.pending_count)
            await conn.rollback()
        return int(count or 0)


# Events per batch call at most (notify's DeliverEvents bound).
BATCH_LIMIT = 500


def _runs_of(rows: list[Any]) -> list[list[Any]]:
    """Rows back into per-aggregate runs, keeping their order (each aggregate's rows were contiguous)."""
    runs: dict[str, list[Any]] = {}
    for row in rows:
        runs.setdefault(row.aggregate_id, []).append(row)
    return list(runs.values())


def _batch_span(rows: list[Any], consumer: str) -> Any:
    """The PRODUCER span of one batch call.

    A batch of one is the single event's span, a child of the trace that wrote the event, exactly as one
    call per event was. A bigger batch belongs to no one event's trace: it starts its own and links every
    event's producing context (OTel messaging batch convention), so each trace still reaches the send."""
    if len(rows) == 1:
        row = rows[0]
        return _tracer.start_as_current_span(
            f"{row.event_type} send",
            context=_parent_of(row),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                **_SEND_ATTRIBUTES,
                "messaging.destination.name": consumer,
                "messaging.message.id": row.event_id,
            },
        )
    links = []
    for row in rows:
        producer = _span_context(row.traceparent)
        if producer is not None:
            links.append(trace.Link(producer, {"messaging.message.id": row.event_id}))
    return _tracer.start_as_current_span(
        "outbox batch send",
        context=otel_context.Context(),
        kind=trace.SpanKind.PRODUCER,
        links=links,
        attributes={
            **_SEND_ATTRIBUTES,
            "messaging.destination.name": consumer,
            "messaging.batch.message_count": len(rows),
        },
    )


def _parent_of(row: Any) -> Any:
    return extract_context({"traceparent": row.traceparent, "tracestate": row.tracestate})


def _span_context(traceparent: str) -> trace.SpanContext | None:
    """The span a W3C traceparent names (version 00), or None. Read directly for links: the global
    propagator's extract builds a whole Context (and baggage) per event, several times the cost."""
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not (trace_id and span_id):
        return None
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(int(match[3], 16)))


_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


_SEND_ATTRIBUTES = {
    "messaging.system": "finmesh.outbox",
    "messaging.operation.type": "send",
}


@dataclass
class _Round:
    deadline: float
    sink_down: bool = False


def head_runs(candidates: Sequence[Any], pending: Sequence[Any]) -> list[list[Any]]:
    """Per aggregate, the candidates that form an unbroken run from its oldest pending event.

    `pending` lists (id, aggregate_id) of every undelivered, live event up to
    the last candidate, in id order. An aggregate whose oldest pending event
    is not a candidate (leased elsewhere, or backing off) yields nothing.
    """
    by_id = {row.id: row for row in candidates}
    runs: dict[str, list[Any]] = {}
    broken: set[str] = set()
    for row in pending:
        if row.aggregate_id in broken:
            continue
        if row.id in by_id:
            runs.setdefault(row.aggregate_id, []).append(by_id[row.id])
        else:
            broken.add(row.aggregate_id)
    return [run for run in runs.values() if run]
