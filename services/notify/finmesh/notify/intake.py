"""Event intake: dedupe by event id, then record every notification the event asks for, in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.common.v1 import event_pb2
from finmesh.notify.clock import Clock
from finmesh.notify.compose import Composer, Draft, operator_drafts
from finmesh.notify.config import NotifySettings
from finmesh.notify.domain.events import OPERATORS, is_synthetic, plan, webhook_matches
from finmesh.notify.domain.templates import resolve_locale
from finmesh.notify.store import erasure, profiles, webhooks
from finmesh.notify.store.schema import notifications, received_events
from finmesh.platform.logs import get_logger

_log = get_logger("finmesh.notify.intake")

USER_ERASED_EVENT = "identity.user.erased.v1"


def flat_payload(event: event_pb2.Event) -> dict[str, str]:
    """Struct payload as text values: lists joined, nested values as JSON (templates take text)."""
    out: dict[str, str] = {}
    for key, value in json_format.MessageToDict(event.payload).items():
        if isinstance(value, list):
            out[key] = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            out[key] = json.dumps(value, ensure_ascii=False, sort_keys=True)
        else:
            out[key] = "" if value is None else str(value)
    return out


def webhook_body(event: event_pb2.Event) -> str:
    return json.dumps({
        "event_id": event.event_id,
        "event_type": event.event_type,
        "source": event.source,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "occurred_at": event.occurred_at.ToJsonString(),
        "user_id": event.user_id,
        "data": json_format.MessageToDict(event.payload),
    }, ensure_ascii=False, sort_keys=True)


class EventIntake:
    def __init__(self, engine: AsyncEngine, composer: Composer, settings: NotifySettings, clock: Clock,
                 wake: Callable[[str], None]) -> None:
        self._engine = engine
        self._composer = composer
        self._settings = settings
        self._clock = clock
        self._wake = wake

    async def deliver(self, event: event_pb2.Event) -> tuple[bool, list[str]]:
        """(duplicate, notification ids). A redelivered event changes nothing and sends nothing.

        The received_events key is the dedupe: a redelivery fails its insert and rolls back. No read
        first: redeliveries are rare, and every first delivery would pay for it."""
        payload = flat_payload(event)
        synthetic = is_synthetic(payload)
        now = self._clock.now()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(received_events).values(
                    event_id=event.event_id, source=event.source, event_type=event.event_type,
                    aggregate_id=event.aggregate_id, sequence=event.sequence, received_at=now))
                if event.event_type == USER_ERASED_EVENT:
                    await self._forget(conn, event, now)
                if (event.event_type == "identity.user.registered.v1" and payload.get("locale")
                        and not await erasure.is_erased(conn, event.user_id)):
                    await profiles.remember(conn, event.user_id, now, locale=payload["locale"])
                # Synthetic traffic is recorded as received (dedupe holds) but tells nobody anything: no
                # customer, operator or webhook receiver hears of test money moving between test accounts.
                drafts = [] if synthetic else await self._drafts(conn, event, payload)
                rows = [self._composer.row(d, now) for d in drafts]
                if rows:
                    await conn.execute(insert(notifications), rows)
        except IntegrityError:
            return True, []  # a concurrent redelivery won
        for category in {r["category"] for r in rows if r["status"] == "QUEUED"}:
            self._wake(category)
        if synthetic:
            # Counted apart from real traffic, so figures drawn from these lines can leave it out.
            _log.info("event_received", event_id=event.event_id, event_type=event.event_type, notifications=0,
                      synthetic=True, suppressed=len(plan(event.event_type, event.user_id, payload)))
        else:
            _log.info("event_received", event_id=event.event_id, event_type=event.event_type,
                      notifications=len(rows))
        return False, [r["notification_id"] for r in rows]

    async def _forget(self, conn: Any, event: event_pb2.Event, now: Any) -> None:
        """Erasure happens before this event's own drafts, so a webhook subscribed to erasures still hears of it
        (subscribers may hold copies to erase too)."""
        user_id = event.user_id or flat_payload(event).get("user_id", "")
        if not user_id:
            _log.error("erasure_without_user", event_id=event.event_id)
            return
        forgotten = await erasure.forget(conn, user_id, event.event_id, now)
        _log.info("user_forgotten", event_id=event.event_id, cancelled=forgotten.cancelled,
                  messages=forgotten.messages, complaints=forgotten.complaints)

    async def _drafts(self, conn: Any, event: event_pb2.Event, payload: dict[str, str]) -> list[Draft]:
        planned = [p for p in plan(event.event_type, event.user_id, payload) if p.user_id]
        # Nothing more is said to an erased person, whichever producer's event arrives later.
        erased = await erasure.erased_among(conn, {p.user_id for p in planned})
        planned = [p for p in planned if p.user_id not in erased]
        known = await profiles.locales(conn, {p.user_id for p in planned if p.user_id != OPERATORS})
        drafts: list[Draft] = []
        s = self._settings
        for p in planned:
            if p.user_id == OPERATORS:
                drafts += operator_drafts(p.template, p.category, p.params, locale=s.operator_locale,
                                          emails=s.operator_emails, phones=s.operator_phones,
                                          event_id=event.event_id)
                if not (s.operator_emails or s.operator_phones):
                    _log.warning("operator_alert_inbox_only", event_id=event.event_id, template=p.template)
            else:
                locale = resolve_locale("", known.get(p.user_id, ""))
                drafts.append(Draft(p.user_id, p.channel, p.category, p.template, locale, p.params,
                                    event_id=event.event_id))
        body = None
        for hook in await webhooks.active(conn):
            if webhook_matches(list(hook.event_types), event.event_type):
                body = body or webhook_body(event)
                drafts.append(Draft(event.user_id, "WEBHOOK", "TRANSACTIONAL", "webhook", "", {},
                                    webhook_id=hook.webhook_id, event_id=event.event_id, raw_body=body))
        return drafts
