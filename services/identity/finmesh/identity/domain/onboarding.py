"""The three onboarding steps (identity number at registration, contact, real name) and when a user is done."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

PASSED = "PASSED"


class Steps(Protocol):
    """A user's step states (PENDING, PASSED or FAILED), erasure and tier, as stored."""

    @property
    def id_number_check(self) -> str: ...

    @property
    def contact_check(self) -> str: ...

    @property
    def real_name_check(self) -> str: ...

    @property
    def erased_at(self) -> datetime | None: ...

    @property
    def risk_tier(self) -> str: ...


def fully_verified(user: Steps) -> bool:
    """Every step passed and the personal data not erased: the user may transact."""
    return (user.id_number_check, user.contact_check, user.real_name_check) == (PASSED,) * 3 and user.erased_at is None


def completes_onboarding(user: Steps, step: str) -> bool:
    """Whether passing `step` (contact or real_name) leaves this user verified and still without a tier."""
    checks = {"id_number": user.id_number_check, "contact": user.contact_check, "real_name": user.real_name_check}
    checks[step] = PASSED
    return set(checks.values()) == {PASSED} and user.erased_at is None and user.risk_tier == "UNSPECIFIED"
