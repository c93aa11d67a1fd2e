"""The payer's device and network facts (CreatePaymentRequest.risk_context), checked before risk sees them.

Risk refuses malformed facts; payments checks them itself so the caller hears
INVALID_ARGUMENT naming the field, instead of a payment held or refused
because risk could not read what payments forwarded.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.errors import Validator

MAX_DEVICE_ID = 64
MAX_IP = 64  # an IPv6 address with a zone fits easily


@dataclass(frozen=True)
class RiskFacts:
    device_id: str = ""
    ip_address: str = ""
    ip_country: str = ""


def validate_risk_context(context: pb.RiskContext) -> RiskFacts:
    """The validated context (country upper-cased); INVALID_ARGUMENT naming every bad field."""
    v = Validator()
    device = context.device_id
    v.require(
        len(device) <= MAX_DEVICE_ID and device.isprintable(),
        "risk_context.device_id",
        f"at most {MAX_DEVICE_ID} printable characters",
    )
    ip = context.ip_address
    if ip:
        try:
            ok = len(ip) <= MAX_IP and bool(ipaddress.ip_address(ip))
        except ValueError:
            ok = False
        v.require(ok, "risk_context.ip_address", "an IPv4 or IPv6 address, or empty")
    country = context.ip_country.upper()
    v.require(
        country == "" or (len(country) == 2 and country.isascii() and country.isalpha()),
        "risk_context.ip_country",
        "ISO 3166-1 alpha-2 code (two letters), or empty",
    )
    v.raise_if_any()
    return RiskFacts(device, ip, country)
