"""One-time codes: six digits, short-lived, single use, a few attempts (seed 3.1, DESIGN "one-time codes")."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from finmesh.platform.errors import FailedPrecondition

DIGITS = 6


def new_code() -> str:
    return f"{secrets.randbelow(10**DIGITS):0{DIGITS}d}"


def well_formed(code: str) -> bool:
    return len(code) == DIGITS and code.isascii() and code.isdigit()


@dataclass(frozen=True)
class ChallengeState:
    expires_at: datetime
    attempts: int  # including the attempt being made
    used: bool


def check_live(state: ChallengeState, now: datetime, max_attempts: int) -> None:
    """Refuse a spent, expired or over-tried challenge before its code is even compared."""
    if state.used:
        raise FailedPrecondition("CODE_INVALID", "this code was already used; request a new one")
    if now >= state.expires_at:
        raise FailedPrecondition("CODE_EXPIRED", "this code has expired; request a new one")
    if state.attempts > max_attempts:
        raise FailedPrecondition("TOO_MANY_ATTEMPTS", "too many wrong codes; request a new one")
