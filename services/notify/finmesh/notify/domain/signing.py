"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>", so a captured request cannot be replayed later."""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Finmesh-Timestamp"
SIGNATURE_HEADER = "X-Finmesh-Signature"
EVENT_ID_HEADER = "X-Finmesh-Event-Id"
SCHEME = "v1"
# Receivers should refuse timestamps further than this from their clock.
DEFAULT_TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: "v1=<hex hmac>"."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp_header: str,
    signature_header: str,
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> str:
    """ "" when valid, else why not ("stale", "malformed", "mismatch"). Comparison is constant-time."""
    # isascii: str.isdigit() accepts digits like "²" that int() refuses.
    if not (timestamp_header.isascii() and timestamp_header.isdigit()):
        return "malformed"
    timestamp = int(timestamp_header)
    if abs(now - timestamp) > tolerance:
        return "stale"
    expected = sign(secret, timestamp, body)
    offered = [part.strip() for part in signature_header.split(",")]
    return "" if any(hmac.compare_digest(expected, o) for o in offered) else "mismatch"
