"""Events from the other services' outboxes, and which notifications each produces."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from finmesh.platform.money import CURRENCIES

OPERATORS = "operators"  # pseudo user id under which operator alerts are recorded
USER_ERASED = "identity.user.erased.v1"
USER_REGISTERED = "identity.user.registered.v1"


@dataclass(frozen=True)
class IncomingEvent:
    """One event as a producer's relay delivered it."""

    event_id: str
    source: str
    event_type: str
    aggregate_id: str
    sequence: int
    user_id: str
    occurred_at: str  # RFC 3339, as webhook receivers get it
    data: dict[str, Any]  # the payload as JSON values
    traceparent: str = ""
    tracestate: str = ""


def flat_payload(data: dict[str, Any]) -> dict[str, str]:
    """The payload as text values: lists joined, nested values as JSON (templates take text)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, list):
            out[key] = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            out[key] = json.dumps(value, ensure_ascii=False, sort_keys=True)
        else:
            out[key] = "" if value is None else str(value)
    return out


def webhook_body(event: IncomingEvent) -> str:
    """What a webhook receiver gets: the event itself, as JSON."""
    return json.dumps(
        {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "source": event.source,
            "aggregate_id": event.aggregate_id,
            "sequence": event.sequence,
            "occurred_at": event.occurred_at,
            "user_id": event.user_id,
            "data": event.data,
        },
        ensure_ascii=False,
        sort_keys=True,
    )


@dataclass(frozen=True)
class Planned:
    user_id: str
    template: str
    category: str  # SECURITY | TRANSACTIONAL | MARKETING
    channel: str  # INBOX | SMS | EMAIL | WEBHOOK
    params: dict[str, str]


def format_amount(minor_units: str, currency: str) -> str:
    """Exact decimal text of an amount: "12345" CNY -> "123.45" (no floats)."""
    exponent = CURRENCIES.get(currency, 2)
    value = int(minor_units)
    sign, value = ("-" if value < 0 else ""), abs(value)
    if exponent == 0:
        return f"{sign}{value}"
    return f"{sign}{value // 10**exponent}.{value % 10**exponent:0{exponent}d}"


def is_synthetic(payload: dict[str, str]) -> bool:
    """Producers mark events of synthetic traffic (load tests, rollout probes between test accounts)."""
    return payload.get("synthetic", "").lower() == "true"


def plan(event_type: str, user_id: str, payload: dict[str, str]) -> list[Planned]:
    """Notifications for one event; events nobody needs to hear about plan none.

    Operator alerts come back as OPERATORS/INBOX; the caller fans them out to
    the operators' configured addresses.
    """
    if event_type.startswith("payments.payment."):
        return _payment(user_id, payload)
    if event_type == "payments.topup.succeeded.v1":
        params = {
            "amount": format_amount(payload.get("amount_minor_units", "0"), payload.get("currency_code", "")),
            "currency": payload.get("currency_code", ""),
        }
        return [Planned(user_id, "topup_succeeded", "TRANSACTIONAL", "INBOX", params)]
    if event_type == "payments.account.frozen.v1":
        return [Planned(user_id, "account_frozen", "SECURITY", "INBOX", {"account_id": payload.get("account_id", "")})]
    if event_type == "identity.user.registered.v1":
        return [Planned(user_id, "welcome", "TRANSACTIONAL", "INBOX", {})]
    if event_type.startswith("risk.alert.raised."):
        keys = ("alert_id", "level", "user_id", "account_id", "payment_id", "reasons")
        params = {k: payload.get(k, "") or "-" for k in keys}
        return [Planned(OPERATORS, "operator_risk_alert", "SECURITY", "INBOX", params)]
    return []


def _payment(user_id: str, payload: dict[str, str]) -> list[Planned]:
    params = {
        "amount": format_amount(payload.get("amount_minor_units", "0"), payload.get("currency_code", "")),
        "currency": payload.get("currency_code", ""),
        "payment_id": payload.get("payment_id", ""),
    }
    status = payload.get("status", "")
    if status == "CAPTURED":
        return [
            Planned(payload.get("payer_user_id", user_id), "payment_sent", "TRANSACTIONAL", "INBOX", params),
            Planned(payload.get("payee_user_id", ""), "payment_received", "TRANSACTIONAL", "INBOX", params),
        ]
    if status in ("IN_REVIEW", "AUTHORIZED"):
        return [Planned(payload.get("payer_user_id", user_id), "payment_held", "TRANSACTIONAL", "INBOX", params)]
    return []


def webhook_matches(patterns: list[str], event_type: str) -> bool:
    """ "payments.payment.*" matches every payment event; "*" matches all."""
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False
