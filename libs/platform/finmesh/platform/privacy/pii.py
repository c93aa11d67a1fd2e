"""Masking of personal data (identity numbers, phones, e-mail, card and account numbers) in text."""

from __future__ import annotations

import re
from typing import Any

from finmesh.platform.privacy.pan import CANDIDATE, mask_pans

# Keys whose values are never shown, whatever they look like.
SENSITIVE_KEYS = frozenset(
    {
        "password",
        "token",
        "access_token",
        "refresh_token",
        "secret",
        "code",
        "otp",
        "id_number",
        "phone",
        "email",
        "legal_name",
        "address",
        "authorization",
        "signing_secret",
        "private_key",
        "data_key",
        "credential",
        "service_credential",
        "service_secret",
    }
)

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# PRC resident identity numbers (18 chars, last may be X) and long digit runs
# such as card or bank account numbers (13-19 digits). Card numbers written in
# groups ("4111 1111 1111 1111") are finmesh.platform.privacy.pan's, as at the edge.
_ID_OR_CARD = re.compile(r"(?<![\w])(?:\d{17}[\dXx]|\d{13,19})(?![\w])")
# E.164 phones and bare mainland mobile numbers.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{8,15}|1[3-9]\d{9})(?![\w])")
# Signed tokens (a JWS header always encodes to "eyJ...") and whatever follows "Bearer ": a token quoted in
# an error message or a metadata dump is as good as a password.
_TOKEN = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}|(?<=[Bb]earer )\S{8,}", re.ASCII)

_ANY = re.compile("|".join(p.pattern for p in (_EMAIL, _ID_OR_CARD, _PHONE, CANDIDATE)))


def mask_text(text: str) -> str:
    """Replace anything that looks like personal data or a token with a fixed-width mask."""
    if text and ("eyJ" in text or "earer " in text):
        text = _TOKEN.sub("***", text)
    if not text or _ANY.search(text) is None:
        return text  # fast path: one scan, and most strings (span names, ids, codes) match nothing
    text = _EMAIL.sub("***@***", text)
    text = _ID_OR_CARD.sub(_keep_last4, text)
    return mask_pans(_PHONE.sub(_keep_last4, text))


def _keep_last4(match: re.Match[str]) -> str:
    return "*" * 4 + match.group(0)[-4:] if len(match.group(0)) > 12 else "****"


def mask_value(key: str, value: Any) -> Any:
    """Mask one structured value: sensitive keys entirely, strings by pattern, containers recursively."""
    if key.lower() in SENSITIVE_KEYS and value not in (None, ""):
        return "***"
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(key, v) for v in value]
    return value


def mask_name(name: str) -> str:
    """Show a legal name's first character only: 张三丰 -> 张**."""
    return name[:1] + "*" * max(len(name) - 1, 1) if name else ""


def mask_middle(value: str, keep_start: int, keep_end: int) -> str:
    """Keep the first and last few characters, e.g. an ID number as 1101**********123X."""
    if len(value) <= keep_start + keep_end:
        return "*" * len(value)
    return value[:keep_start] + "*" * (len(value) - keep_start - keep_end) + value[-keep_end:]


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return (local[:1] + "***@" + domain) if domain else "***"
