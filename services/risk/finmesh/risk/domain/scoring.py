"""Scores a payment from its features under a set of rules; every point has a named reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from finmesh.platform.money import CURRENCIES


class Decision(StrEnum):
    APPROVE = "APPROVE"
    REVIEW = "REVIEW"
    DECLINE = "DECLINE"


class WarningLevel(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


@dataclass(frozen=True)
class Rules:
    """Thresholds in major units of the payment's currency; scores out of 100."""

    version: str = "builtin-1"
    large_amount: int = 50_000
    very_large_amount: int = 200_000
    velocity_window_seconds: int = 600
    velocity_max_count: int = 20
    review_score: int = 40
    decline_score: int = 80


@dataclass(frozen=True)
class Features:
    amount_minor_units: int
    currency: str
    # Payments by the same payer inside the velocity window, this one excluded.
    recent_count: int = 0
    blocked: bool = False


@dataclass(frozen=True)
class Reason:
    code: str
    score: int
    detail: str


@dataclass(frozen=True)
class Verdict:
    score: int
    decision: Decision
    warning_level: WarningLevel
    reasons: tuple[Reason, ...] = field(default_factory=tuple)


def _major(minor_units: int, currency: str) -> int:
    return minor_units // 10 ** CURRENCIES.get(currency, 2)


def assess(features: Features, rules: Rules) -> Verdict:
    reasons: list[Reason] = []
    major = _major(features.amount_minor_units, features.currency)
    if major >= rules.very_large_amount:
        reasons.append(Reason("AMOUNT_VERY_LARGE", 60, f"at least {rules.very_large_amount} {features.currency}"))
    elif major >= rules.large_amount:
        reasons.append(Reason("AMOUNT_LARGE", 40, f"at least {rules.large_amount} {features.currency}"))
    if features.recent_count >= rules.velocity_max_count:
        reasons.append(Reason("VELOCITY_USER_COUNT", 50,
                              f"{features.recent_count} payments in {rules.velocity_window_seconds}s"))
    if features.blocked:
        reasons.append(Reason("BLOCK_LISTED", 100, "payer is on a block list"))
    score = min(100, sum(r.score for r in reasons))
    return Verdict(score, _decision(score, rules), _warning(score), tuple(reasons))


def _decision(score: int, rules: Rules) -> Decision:
    if score >= rules.decline_score:
        return Decision.DECLINE
    if score >= rules.review_score:
        return Decision.REVIEW
    return Decision.APPROVE


def _warning(score: int) -> WarningLevel:
    if score >= 95:
        return WarningLevel.CRITICAL
    if score >= 70:
        return WarningLevel.HIGH
    if score >= 40:
        return WarningLevel.MEDIUM
    return WarningLevel.LOW
