"""Event intake: dedupe by event id, then record every notification the events ask for, in one transaction.

A relay round arrives as one batch (DeliverEvents); DeliverEvent is a batch of one. Events are taken in
request order, so an aggregate's events (which producers send in sequence order) are recorded in that order,
and an event sees every change the batch's earlier events made (an erasure, a remembered locale) exactly as
if each had come alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.domain.events import (
    OPERATORS,
    USER_ERASED,
    USER_REGISTERED,
    IncomingEvent,
    Planned,
    flat_payload,
    is_synthetic,
    plan,
    webhook_body,
    webhook_matches,
)
from finmesh.notify.domain.templates import resolve_locale
from finmesh.notify.store import erasure as erasure_store
from finmesh.notify.store import profiles, queue, received, webhooks
from finmesh.notify.usecases import erasure
from finmesh.notify.usecases.compose import Draft, operator_drafts
from finmesh.notify.usecases.deps import Deps
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.telemetry import extract_context

_log = get_logger("finmesh.notify.intake")


@dataclass(frozen=True)
class Outcome:
    """What became of one event: duplicates change nothing and send nothing."""

    duplicate: bool
    notification_ids: list[str]


@dataclass
class _Incoming:
    event: IncomingEvent
    payload: dict[str, str]
    synthetic: bool
    # What the event's type plans for its users (suppressed, not sent, when synthetic).
    planned: list[Planned]
    rows: list[dict[str, Any]] = field(default_factory=list)


class _Lookups:
    """What drafting reads (erased users, known locales, active webhooks), read once per batch.

    An erasure or a remembered locale earlier in the batch changes what later events must see: the
    intake calls invalidate() after those, and the next event reads again inside the same transaction."""

    def __init__(self, conn: AsyncConnection, user_ids: set[str]) -> None:
        self._conn = conn
        self._user_ids = user_ids
        self._erased: set[str] | None = None
        self._locales: dict[str, str] | None = None
        self._hooks: list[Any] | None = None

    def invalidate(self) -> None:
        self._erased = None
        self._locales = None

    async def erased(self) -> set[str]:
        if self._erased is None:
            self._erased = await erasure_store.erased_among(self._conn, self._user_ids)
        return self._erased

    async def locales(self) -> dict[str, str]:
        if self._locales is None:
            self._locales = await profiles.locales(self._conn, self._user_ids - {OPERATORS})
        return self._locales

    async def hooks(self) -> list[Any]:
        # The intake never changes webhooks, so one read serves the whole batch.
        if self._hooks is None:
            self._hooks = await webhooks.active(self._conn)
        return self._hooks


class EventIntake:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def deliver(self, event: IncomingEvent) -> Outcome:
        """One event: a batch of one."""
        [outcome] = await self.deliver_batch([event])
        return outcome

    async def deliver_batch(self, events: Sequence[IncomingEvent]) -> list[Outcome]:
        """One outcome per event, in request order; the batch's new events commit in one transaction.

        The received_events key is the dedupe (insert ... on conflict do nothing, so a concurrent delivery of
        the same ids simply finds them taken). Should anything else conflict, the batch is tried once more,
        then one event per transaction, where a conflicting event counts as a duplicate as it always has."""
        for _ in range(2):
            try:
                return await self._take(events)
            except IntegrityError:
                _log.warning("event_batch_conflict", events=len(events))
        return [await self._take_alone(event) for event in events]

    async def _take_alone(self, event: IncomingEvent) -> Outcome:
        try:
            [outcome] = await self._take([event])
        except IntegrityError:
            return Outcome(True, [])  # a concurrent redelivery won
        return outcome

    async def _take(self, events: Sequence[IncomingEvent]) -> list[Outcome]:
        now = self._deps.clock.now()
        # Within a request the first copy of an event id is the event; later copies are duplicates.
        unique: dict[str, IncomingEvent] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        async with self._deps.engine.begin() as conn:
            fresh_ids = await received.record(conn, list(unique.values()), now)
            fresh = [self._incoming(unique[event_id]) for event_id in unique if event_id in fresh_ids]
            await self._record_notifications(conn, fresh, now)
        taken = {item.event.event_id: item for item in fresh}
        outcomes: list[Outcome] = []
        for event in events:
            item = taken.pop(event.event_id, None)
            outcomes.append(Outcome(False, [r["notification_id"] for r in item.rows]) if item else Outcome(True, []))
        self._after_commit(fresh, duplicates=len(events) - len(fresh))
        return outcomes

    def _incoming(self, event: IncomingEvent) -> _Incoming:
        payload = flat_payload(event.data)
        synthetic = is_synthetic(payload)
        return _Incoming(event, payload, synthetic, plan(event.event_type, event.user_id, payload))

    async def _record_notifications(self, conn: AsyncConnection, fresh: list[_Incoming], now: datetime) -> None:
        """Apply each new event in order, writing the notifications of the whole batch with few statements."""
        # Synthetic traffic is recorded as received (dedupe holds) but tells nobody anything: no
        # customer, operator or webhook receiver hears of test money moving between test accounts.
        real = [item for item in fresh if not item.synthetic]
        if not real:
            return
        lookups = _Lookups(conn, {p.user_id for item in real for p in item.planned if p.user_id})
        # A batch's server span belongs to the relay's batch trace; each event's messages carry its own
        # producer's trace instead, so the delivery worker's spans join the trace that caused them.
        own_trace = len(fresh) > 1
        pending: list[dict[str, Any]] = []
        for item in real:
            event = item.event
            if event.event_type == USER_ERASED:
                # Erasure withdraws what is queued for the user: the batch's earlier messages must be rows first.
                await _add_rows(conn, pending)
                # Before this event's own drafts, so a webhook subscribed to erasures still hears of it.
                await erasure.forget(conn, event, now)
                lookups.invalidate()
            if (
                event.event_type == USER_REGISTERED
                and item.payload.get("locale")
                and not await erasure_store.is_erased(conn, event.user_id)
            ):
                await profiles.remember(conn, event.user_id, now, locale=item.payload["locale"])
                lookups.invalidate()
            drafts = await self._drafts(lookups, item)
            with _event_trace(event) if own_trace and event.traceparent else contextlib.nullcontext():
                item.rows = [self._deps.composer.row(d, now) for d in drafts]
            pending += item.rows
        await _add_rows(conn, pending)

    def _after_commit(self, fresh: list[_Incoming], duplicates: int) -> None:
        rows = [r for item in fresh for r in item.rows]
        for category in {r["category"] for r in rows if r["status"] == "QUEUED"}:
            self._deps.wake(category)
        synthetic = [item for item in fresh if item.synthetic]
        if len(fresh) == 1 and not duplicates:
            self._log_one(fresh[0])
            return
        # One line per batch. Synthetic events are counted apart from real traffic, so figures drawn from
        # these lines can leave them out.
        _log.info(
            "events_received",
            events=len(fresh) - len(synthetic),
            duplicates=duplicates,
            notifications=len(rows),
            synthetic=len(synthetic),
            suppressed=sum(len(item.planned) for item in synthetic),
        )

    @staticmethod
    def _log_one(item: _Incoming) -> None:
        event = item.event
        if item.synthetic:
            _log.info(
                "event_received",
                event_id=event.event_id,
                event_type=event.event_type,
                notifications=0,
                synthetic=True,
                suppressed=len(item.planned),
            )
        else:
            _log.info(
                "event_received", event_id=event.event_id, event_type=event.event_type, notifications=len(item.rows)
            )

    async def _drafts(self, lookups: _Lookups, item: _Incoming) -> list[Draft]:
        event = item.event
        # Nothing more is said to an erased person, whichever producer's event arrives later.
        planned = [p for p in item.planned if p.user_id]
        erased = await lookups.erased() if planned else set()
        planned = [p for p in planned if p.user_id not in erased]
        known = await lookups.locales() if any(p.user_id != OPERATORS for p in planned) else {}
        drafts: list[Draft] = []
        s = self._deps.settings
        for p in planned:
            if p.user_id == OPERATORS:
                drafts += operator_drafts(
                    p.template,
                    p.category,
                    p.params,
                    locale=s.operator_locale,
                    emails=s.operator_emails,
                    phones=s.operator_phones,
                    event_id=event.event_id,
                )
                if not (s.operator_emails or s.operator_phones):
                    _log.warning("operator_alert_inbox_only", event_id=event.event_id, template=p.template)
            else:
                locale = resolve_locale("", known.get(p.user_id, ""))
                drafts.append(
                    Draft(p.user_id, p.channel, p.category, p.template, locale, p.params, event_id=event.event_id)
                )
        body = None
        for hook in await lookups.hooks():
            if webhook_matches(list(hook.event_types), event.event_type):
                body = body or webhook_body(event)
                drafts.append(
                    Draft(
                        event.user_id,
                        "WEBHOOK",
                        "TRANSACTIONAL",
                        "webhook",
                        "",
                        {},
                        webhook_id=hook.webhook_id,
                        event_id=event.event_id,
                        raw_body=body,
                    )
                )
        return drafts


@contextlib.contextmanager
def _event_trace(event: IncomingEvent) -> Iterator[None]:
    token = otel_context.attach(extract_context({"traceparent": event.traceparent, "tracestate": event.tracestate}))
    try:
        yield
    finally:
        otel_context.detach(token)


async def _add_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Write the pending rows and empty the list for the events after."""
    await queue.add(conn, rows)
    rows.clear()
