"""One-time codes: six digits, short-lived, single use, a few attempts (seed 3.1, DESIGN "one-time codes").

The one check every code goes through, whether it verifies a contact or completes a login: the challenge
must be live (unspent, unexpired, not over-tried) and the code the one sent. Codes are compared as keyed
hashes (usecases.codes makes them), in constant time.
"""

from __future__ import annotations

import hmac
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
    code_hash: str | None = None  # of the code sent; None when none was (TOTP, a held login's wrong password)


def check_live(state: ChallengeState, now: datetime, max_attempts: int) -> None:
    """Refuse a spent, expired or over-tried challenge before its code is even compared."""
    if state.used:
        raise FailedPrecondition("CODE_INVALID", "this code was already used; request a new one")
    if now >= state.expires_at:
        raise FailedPrecondition("CODE_EXPIRED", "this code has expired; request a new one")
    if state.attempts > max_attempts:
        raise FailedPrecondition("TOO_MANY_ATTEMPTS", "too many wrong codes; request a new one")


def check_code(state: ChallengeState, given_hash: str, now: datetime, max_attempts: int) -> None:
    """Live, and the code given (`given_hash`, hashed as the sent one was) is the code sent; else the refusal."""
    check_live(state, now, max_attempts)
    if state.code_hash is None or not hmac.compare_digest(state.code_hash, given_hash):
        raise FailedPrecondition("CODE_INVALID", "wrong code")


def code_passes(state: ChallengeState, given_hash: str, now: datetime, max_attempts: int) -> bool:
    """Whether check_code would pass, without refusing."""
    try:
        check_code(state, given_hash, now, max_attempts)
    except FailedPrecondition:
        return False
    return True
