"""Request validation: every bad field named at once (INVALID_ARGUMENT with field violations)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from finmesh.common.v1 import event_pb2
from finmesh.notify.domain.consent import parse_hhmm, valid_time_zone
from finmesh.notify.domain.templates import LOCALES, TEMPLATES, missing_params
from finmesh.notify.usecases.notifications import SendRequest
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, Validator
from finmesh.platform.rpc import event_intake
from finmesh.platform.storage.idempotency import validate_key

MAX_ID = 64
MAX_PAGE = 500
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+$")
_EVENT_PATTERN = re.compile(r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$")
SEND_CHANNELS = {pb.CHANNEL_SMS: "SMS", pb.CHANNEL_EMAIL: "EMAIL", pb.CHANNEL_INBOX: "INBOX"}
CATEGORIES = {
    pb.CATEGORY_SECURITY: "SECURITY",
    pb.CATEGORY_TRANSACTIONAL: "TRANSACTIONAL",
    pb.CATEGORY_MARKETING: "MARKETING",
}
TARGET_STATES = {
    pb.COMPLAINT_STATE_ACCEPTED: "ACCEPTED",
    pb.COMPLAINT_STATE_RESPONDED: "RESPONDED",
    pb.COMPLAINT_STATE_RESOLVED: "RESOLVED",
}
ALL_STATES = {pb.COMPLAINT_STATE_OPEN: "OPEN", **TARGET_STATES}


def _id(v: Validator, value: str, field: str) -> None:
    v.require(0 < len(value) <= MAX_ID and value.isprintable(), field, f"required, at most {MAX_ID} characters")


def page(v: Validator, page_size: int, token: str, *, numeric_token: bool = False) -> int:
    v.require(page_size >= 0, "page_size", "must not be negative")
    if token and numeric_token:
        # ASCII digits that fit a BIGINT: str.isdigit alone passes "²" (int() refuses it) and numbers past 2**63.
        v.require(
            token.isascii() and token.isdigit() and len(token) <= 18, "page_token", "not a token this service issued"
        )
    return min(page_size or 50, MAX_PAGE)


def event(e: event_pb2.Event) -> None:
    v = Validator()
    v.violations += event_violations(e, "event")
    v.raise_if_any()


def event_violations(e: event_pb2.Event, name: str) -> list[FieldViolation]:
    """What is wrong with one event, its fields named under `name` ("event", "events[3]"): notify reacts to
    each event on its own, so it needs no aggregate position (finmesh.platform.rpc.event_intake)."""
    return event_intake.event_violations(e, name, ordered=False)


def event_batch(r: pb.DeliverEventsRequest) -> None:
    """The request as a whole; each event is judged on its own (a bad one must not fail its neighbours)."""
    event_intake.check_batch(r.events)


def send(r: pb.SendNotificationRequest) -> SendRequest:
    validate_key(r.idempotency_key)
    v = Validator()
    _id(v, r.user_id, "user_id")
    channel = SEND_CHANNELS.get(r.channel, "")
    if r.channel == pb.CHANNEL_WEBHOOK:
        v.require(False, "channel", "webhooks carry events; register one with CreateWebhook")
    else:
        v.require(bool(channel), "channel", "one of SMS, EMAIL, INBOX")
    category = CATEGORIES.get(r.category, "")
    v.require(bool(category), "category", "one of SECURITY, TRANSACTIONAL, MARKETING")
    template = TEMPLATES.get(r.template)
    if v.require(template is not None, "template", "unknown template") and category and template:
        v.require(
            category in template.categories,
            "category",
            f"template {r.template} is for {', '.join(sorted(template.categories))} messages",
        )
    v.require(r.locale in ("", *LOCALES), "locale", f"empty or one of {', '.join(LOCALES)}")
    params = dict(r.params)
    v.require(
        len(params) <= 20 and all(len(k) <= 40 and len(x) <= 500 for k, x in params.items()),
        "params",
        "at most 20 entries, keys up to 40 and values up to 500 characters",
    )
    if template is not None:
        missing = missing_params(r.template, params)
        v.require(not missing, "params", f"missing {', '.join(missing)}")
    if channel == "SMS":
        v.require(bool(_E164.match(r.address)), "address", "an E.164 phone number, e.g. +8613800138000")
    elif channel == "EMAIL":
        v.require(len(r.address) <= 254 and bool(_EMAIL.match(r.address)), "address", "an e-mail address")
    elif channel == "INBOX":
        v.require(not r.address, "address", "must be empty for the inbox")
    v.raise_if_any()
    return SendRequest(r.user_id, channel, category, r.template, r.locale, params, r.address)


def consent(r: pb.SetConsentRequest) -> None:
    validate_key(r.idempotency_key)
    v = Validator()
    c = r.consent
    _id(v, c.user_id, "consent.user_id")
    if v.require(c.category != pb.CATEGORY_UNSPECIFIED, "consent.category", "required"):
        v.require(
            c.category == pb.CATEGORY_MARKETING,
            "consent.category",
            "only marketing needs consent; security and transactional messages are always sent",
        )
    start, end = c.quiet_hours_start, c.quiet_hours_end
    v.require(bool(start) == bool(end), "consent.quiet_hours_end", "set both ends of quiet hours, or neither")
    for field, value in (("consent.quiet_hours_start", start), ("consent.quiet_hours_end", end)):
        v.require(not value or parse_hhmm(value) is not None, field, "HH:MM, 24-hour")
    v.require(
        not c.time_zone or valid_time_zone(c.time_zone), "consent.time_zone", "an IANA time zone such as Asia/Shanghai"
    )
    v.raise_if_any()


def get_consent(r: pb.GetConsentRequest) -> str:
    v = Validator()
    _id(v, r.user_id, "user_id")
    v.require(r.category in CATEGORIES, "category", "required")
    v.raise_if_any()
    return CATEGORIES[r.category]


def webhook(r: pb.CreateWebhookRequest, allow_loopback_http: bool) -> None:
    validate_key(r.idempotency_key)
    v = Validator()
    v.require(
        _url_ok(r.url, allow_loopback_http),
        "url",
        "an https URL without credentials (plain http only to a loopback address)",
    )
    v.require(0 < len(r.event_types) <= 20, "event_types", "1 to 20 event types")
    for i, pattern in enumerate(r.event_types):
        v.require(
            len(pattern) <= 100 and bool(_EVENT_PATTERN.match(pattern)),
            f"event_types[{i}]",
            'an event type, a prefix ending in ".*", or "*"',
        )
    v.raise_if_any()


def _url_ok(url: str, allow_loopback_http: bool) -> bool:
    if not url or len(url) > 2000:
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return False
    if not host or parts.username or parts.password:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and allow_loopback_http and _loopback(host)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def complaint_open(r: pb.OpenComplaintRequest) -> None:
    validate_key(r.idempotency_key)
    v = Validator()
    _id(v, r.user_id, "user_id")
    v.require(0 < len(r.subject.strip()) <= 200, "subject", "required, at most 200 characters")
    v.require(0 < len(r.body.strip()) <= 5000, "body", "required, at most 5000 characters")
    v.raise_if_any()


def complaint_advance(r: pb.AdvanceComplaintRequest) -> str:
    validate_key(r.idempotency_key)
    v = Validator()
    _id(v, r.complaint_id, "complaint_id")
    v.require(r.to_state in TARGET_STATES, "to_state", "one of ACCEPTED, RESPONDED, RESOLVED")
    v.require(len(r.note) <= 2000, "note", "at most 2000 characters")
    v.raise_if_any()
    return TARGET_STATES[r.to_state]


def required_id(value: str, field: str) -> None:
    v = Validator()
    _id(v, value, field)
    v.raise_if_any()
