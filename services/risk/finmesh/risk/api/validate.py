"""Turns risk requests into domain values, naming every bad field at once (INVALID_ARGUMENT)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2

from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.money import Money, validate_amount
from finmesh.platform.storage.idempotency import MAX_KEY_LENGTH
from finmesh.risk.domain.onboarding import USER_KINDS
from finmesh.risk.domain.values import AmlKind, BlockKind, Tier, WarningLevel
from finmesh.risk.domain.windows import MAX_BUCKETS, bucket_count
from finmesh.risk.usecases.assessing import PaymentFacts
from finmesh.risk.v1 import risk_service_pb2 as pb

K = TypeVar("K")

MAX_ID = 64
MAX_PAGE = 500
MAX_REASON = 200
MAX_CHECKS = 64  # AssessPayments: checks per call

TIERS: dict[int, Tier] = {
    pb.RISK_TIER_UNSPECIFIED: Tier.UNSPECIFIED,
    pb.RISK_TIER_LOW: Tier.LOW,
    pb.RISK_TIER_MEDIUM: Tier.MEDIUM,
    pb.RISK_TIER_HIGH: Tier.HIGH,
}
BLOCK_KINDS: dict[int, BlockKind] = {
    pb.BLOCK_LIST_KIND_USER: BlockKind.USER,
    pb.BLOCK_LIST_KIND_DEVICE: BlockKind.DEVICE,
    pb.BLOCK_LIST_KIND_IP: BlockKind.IP,
    pb.BLOCK_LIST_KIND_ACCOUNT: BlockKind.ACCOUNT,
}
AML_KINDS: dict[int, AmlKind] = {
    pb.AML_REPORT_KIND_LARGE_VALUE: AmlKind.LARGE_VALUE,
    pb.AML_REPORT_KIND_STRUCTURING: AmlKind.STRUCTURING,
}
LEVELS: dict[int, WarningLevel] = {
    pb.WARNING_LEVEL_LOW: WarningLevel.LOW,
    pb.WARNING_LEVEL_MEDIUM: WarningLevel.MEDIUM,
    pb.WARNING_LEVEL_HIGH: WarningLevel.HIGH,
    pb.WARNING_LEVEL_CRITICAL: WarningLevel.CRITICAL,
}


def _id(v: Validator, value: str, field: str, *, required: bool) -> None:
    if required and not value:
        v.violations.append(FieldViolation(field, f"required, at most {MAX_ID} printable characters"))
    elif len(value) > MAX_ID or not value.isprintable():
        v.violations.append(FieldViolation(field, f"at most {MAX_ID} printable characters"))


def _country(v: Validator, value: str, field: str) -> str:
    code = value.upper()
    v.require(
        code == "" or (len(code) == 2 and code.isascii() and code.isalpha()),
        field,
        "ISO 3166-1 alpha-2 code (two letters) or empty",
    )
    return code


def canonical_ip(value: str) -> str | None:
    """One spelling per address (::ffff:1.2.3.4 and 1.2.3.4 are one IP for velocity and block lists)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.compressed


def _ip(v: Validator, value: str, field: str) -> str:
    if not value:
        return ""
    canonical = canonical_ip(value) if len(value) <= MAX_ID else None
    v.require(canonical is not None, field, "an IPv4 or IPv6 address, or empty")
    return canonical or ""


# google.protobuf.Timestamp's valid range: 0001-01-01 to 9999-12-31.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def _time(v: Validator, ts: timestamp_pb2.Timestamp, field: str) -> datetime | None:
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        v.violations.append(FieldViolation(field, "outside 0001-01-01..9999-12-31"))
        return None
    return ts.ToDatetime(tzinfo=UTC)


def _key(v: Validator, key: str) -> None:
    """The idempotency key, checked with the other fields so a caller hears about everything at once."""
    if not key:
        v.violations.append(FieldViolation("idempotency_key", "required on every mutating call"))
    elif len(key) > MAX_KEY_LENGTH or not key.isprintable():
        v.violations.append(FieldViolation("idempotency_key", f"at most {MAX_KEY_LENGTH} printable characters"))


def idempotency_key(key: str) -> None:
    v = Validator()
    _key(v, key)
    v.raise_if_any()


def payment_facts(request: pb.AssessPaymentRequest) -> PaymentFacts:
    v = Validator()
    _id(v, request.payment_id, "payment_id", required=True)
    _id(v, request.payer_user_id, "payer_user_id", required=False)
    _id(v, request.payer_account_id, "payer_account_id", required=True)
    _id(v, request.payee_account_id, "payee_account_id", required=False)
    _id(v, request.device_id, "device_id", required=False)
    ip = _ip(v, request.ip_address, "ip_address")
    ip_country = _country(v, request.ip_country, "ip_country")
    home_country = _country(v, request.home_country, "home_country")
    v.require(request.payer_tier in TIERS, "payer_tier", "unknown risk tier")
    if not request.HasField("amount"):
        v.violations.append(FieldViolation("amount", "required"))
    else:
        v.violations.extend(validate_amount(request.amount.currency_code, request.amount.minor_units))
    v.raise_if_any()
    return PaymentFacts(
        payment_id=request.payment_id,
        payer_user_id=request.payer_user_id,
        payer_account_id=request.payer_account_id,
        payee_account_id=request.payee_account_id,
        amount=Money(request.amount.currency_code, request.amount.minor_units),
        tier=TIERS[request.payer_tier],
        device_id=request.device_id,
        ip_address=ip,
        ip_country=ip_country,
        home_country=home_country,
        synthetic=request.synthetic,
    )


def check_count(count: int) -> None:
    if not 0 < count <= MAX_CHECKS:
        raise InvalidArgument(FieldViolation("checks", f"between 1 and {MAX_CHECKS} checks"))


def onboarding(request: pb.AssessOnboardingRequest) -> tuple[str, str]:
    """Validated (ip_address, ip_country) of an onboarding request."""
    v = Validator()
    _key(v, request.idempotency_key)
    _id(v, request.user_id, "user_id", required=True)
    _id(v, request.device_id, "device_id", required=False)
    v.require(0 <= request.age_years <= 150, "age_years", "whole years between 0 and 150")
    v.require(request.user_kind in USER_KINDS, "user_kind", f"one of {', '.join(USER_KINDS)}")
    ip = _ip(v, request.ip_address, "ip_address")
    country = _country(v, request.ip_country, "ip_country")
    v.raise_if_any()
    return ip, country


def block_entry(request: pb.AddBlockListEntryRequest, now: datetime) -> tuple[BlockKind, str, datetime | None]:
    v = Validator()
    _key(v, request.idempotency_key)
    v.require(request.kind in BLOCK_KINDS, "kind", "one of USER, DEVICE, IP, ACCOUNT")
    value = request.value
    if request.kind == pb.BLOCK_LIST_KIND_IP:
        value = _ip(v, request.value, "value")
    _id(v, request.value, "value", required=True)
    v.require(
        len(request.reason) <= MAX_REASON and request.reason.isprintable(),
        "reason",
        f"at most {MAX_REASON} printable characters",
    )
    expires = _time(v, request.expires_at, "expires_at") if request.HasField("expires_at") else None
    if expires is not None:
        v.require(expires > now, "expires_at", "must be in the future (leave unset for no expiry)")
    v.raise_if_any()
    return BLOCK_KINDS[request.kind], value, expires


def removal(request: pb.RemoveBlockListEntryRequest) -> None:
    v = Validator()
    _key(v, request.idempotency_key)
    value = request.entry_id
    v.require(
        0 < len(value) <= MAX_ID and value.isprintable(), "entry_id", "required: an id returned by AddBlockListEntry"
    )
    v.raise_if_any()


def optional_kind(value: int, kinds: Mapping[int, K], zero: int, field: str) -> K | None:
    """An optional enum filter: UNSPECIFIED means all."""
    if value == zero:
        return None
    if value not in kinds:
        raise InvalidArgument(FieldViolation(field, "unknown value"))
    return kinds[value]


def page(page_size: int, page_token: str) -> tuple[int, int | None]:
    """(size, before_seq) of a newest-first page; the token is the last seq the caller saw."""
    v = Validator()
    v.require(page_size >= 0, "page_size", "must not be negative")
    # ASCII digits that fit a BIGINT: str.isdigit passes "²" (int() refuses it), 19 nines pass 2**63.
    v.require(
        page_token == "" or (page_token.isascii() and page_token.isdigit() and len(page_token) <= 18),
        "page_token",
        "a token returned by the previous page",
    )
    v.raise_if_any()
    return min(page_size or 50, MAX_PAGE), int(page_token) if page_token else None


def indicator_range(request: pb.GetRiskIndicatorsRequest) -> tuple[datetime, datetime, int]:
    v = Validator()
    start = _time(v, request.start, "start") if v.require(request.HasField("start"), "start", "required") else None
    end = _time(v, request.end, "end") if v.require(request.HasField("end"), "end", "required") else None
    v.require(request.bucket_seconds > 0, "bucket_seconds", "must be positive")
    v.raise_if_any()
    assert start is not None and end is not None
    start = start.replace(microsecond=0)  # buckets start on whole seconds, as the database counts them
    if v.require(end > start, "end", "must be after start"):
        v.require(
            bucket_count(start, end, request.bucket_seconds) <= MAX_BUCKETS,
            "bucket_seconds",
            f"at most {MAX_BUCKETS} buckets per request; widen the buckets or narrow the range",
        )
    v.raise_if_any()
    return start, end, request.bucket_seconds
