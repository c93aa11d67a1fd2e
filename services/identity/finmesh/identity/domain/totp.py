"""TOTP (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 6 digits, 30-second steps, 160-bit secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from urllib.parse import quote, urlencode

PERIOD = 30
DIGITS = 6
SECRET_BYTES = 20  # 160 bits, the RFC 4226 recommendation
# Accept the previous and next step too: phone clocks drift (RFC 6238 section 5.2).
WINDOW = 1


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def step_of(unix_seconds: float) -> int:
    return int(unix_seconds // PERIOD)


def hotp(secret: bytes, counter: int) -> str:
    digest = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 10**DIGITS:0{DIGITS}d}"


def code_at(secret: bytes, unix_seconds: float) -> str:
    return hotp(secret, step_of(unix_seconds))


def matching_step(secret: bytes, code: str, unix_seconds: float, last_step: int) -> int | None:
    """The step `code` belongs to, if it is within the window and newer than the last accepted one."""
    now = step_of(unix_seconds)
    for step in range(now - WINDOW, now + WINDOW + 1):
        if step > last_step and hmac.compare_digest(hotp(secret, step), code):
            return step
    return None


def provisioning_uri(secret: bytes, account: str, issuer: str = "finmesh") -> str:
    """otpauth:// URI that authenticator apps read (usually from a QR code)."""
    label = quote(f"{issuer}:{account}")
    params = urlencode(
        {
            "secret": base64.b32encode(secret).decode().rstrip("="),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": PERIOD,
        }
    )
    return f"otpauth://totp/{label}?{params}"
