"""Turns a planned message into a notification row: rendered in the recipient's locale, sealed, queued."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finmesh.notify.clients.senders import Outgoing
from finmesh.notify.domain.events import OPERATORS
from finmesh.notify.domain.templates import render, render_subject
from finmesh.notify.store.sealing import Sealer
from finmesh.platform.observability.telemetry import inject_context


@dataclass(frozen=True)
class Draft:
    user_id: str
    channel: str  # INBOX | SMS | EMAIL | WEBHOOK
    category: str
    template: str
    locale: str
    params: dict[str, str]
    address: str = ""
    webhook_id: str = ""
    event_id: str = ""
    # Webhooks carry the event itself rather than a rendered template.
    raw_body: str | None = None


class Composer:
    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    @property
    def sealer(self) -> Sealer:
        return self._sealer

    def row(self, draft: Draft, now: datetime, not_before: datetime | None = None) -> dict[str, Any]:
        notification_id = str(uuid.uuid4())
        body = draft.raw_body if draft.raw_body is not None else render(draft.template, draft.locale, draft.params)
        subject = "" if draft.raw_body is not None else render_subject(draft.template, draft.locale, draft.params)
        inbox = draft.channel == "INBOX"
        seal = self._sealer.seal
        return {
            "notification_id": notification_id,
            "event_id": draft.event_id,
            "user_id": draft.user_id,
            "channel": draft.channel,
            "category": draft.category,
            "template": draft.template,
            "locale": draft.locale,
            "subject_sealed": seal(f"{notification_id}:subject", subject),
            "body_sealed": seal(f"{notification_id}:body", body),
            "address_sealed": seal(f"{notification_id}:address", draft.address) if draft.address else None,
            "webhook_id": draft.webhook_id,
            # The inbox is delivered by being recorded; the rest wait for the worker.
            "status": "SENT" if inbox else "QUEUED",
            "attempts": 1 if inbox else 0,
            "next_attempt_at": None if inbox else (not_before or now),
            "last_error": "",
            "traceparent": inject_context().get("traceparent", ""),
            "created_at": now,
            "sent_at": now if inbox else None,
        }

    def outgoing(self, row: Any, *, url: str = "", secret: str = "") -> Outgoing:
        """The row opened for sending (webhooks pass their endpoint's URL and secret)."""
        nid = row.notification_id
        address = url or (self._sealer.open(f"{nid}:address", row.address_sealed) if row.address_sealed else "")
        subject = self._sealer.open(f"{nid}:subject", row.subject_sealed) if row.subject_sealed else ""
        return Outgoing(
            nid,
            row.channel,
            address,
            subject,
            self._sealer.open(f"{nid}:body", row.body_sealed),
            event_id=row.event_id,
            secret=secret,
        )


def operator_drafts(
    template: str,
    category: str,
    params: dict[str, str],
    *,
    locale: str,
    emails: list[str],
    phones: list[str],
    event_id: str = "",
) -> list[Draft]:
    """An inbox record for the operators' console, plus an e-mail (and SMS) to each configured operator."""
    drafts = [Draft(OPERATORS, "INBOX", category, template, locale, params, event_id=event_id)]
    drafts += [
        Draft(OPERATORS, "EMAIL", category, template, locale, params, address=a, event_id=event_id) for a in emails
    ]
    drafts += [
        Draft(OPERATORS, "SMS", category, template, locale, params, address=a, event_id=event_id) for a in phones
    ]
    return drafts
