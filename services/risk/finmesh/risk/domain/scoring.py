"""Scores a payment from its features under the active rules; every point has a named reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from finmesh.platform.money import Money
from finmesh.risk.domain import aml
from finmesh.risk.domain.rules import Rules, WarningThresholds
from finmesh.risk.domain.values import BlockKind, Decision, Reason, Subject, Tier, WarningLevel

MAX_SCORE = 100


@dataclass(frozen=True)
class Tally:
    """A subject's earlier payments inside one window (this payment excluded)."""

    count: int = 0  # every attempt, declined ones too: repeated refused attempts are themselves a signal
    amount: int = 0  # minor units in the payment's currency; declined attempts moved nothing and are left out


@dataclass(frozen=True)
class PaymentFeatures:
    amount: Money
    tier: Tier = Tier.UNSPECIFIED
    # By (subject, window_seconds). A subject the payment does not name (no device id) has no tally.
    tallies: Mapping[tuple[Subject, int], Tally] = field(default_factory=dict)
    new_device: bool = False
    blocked: frozenset[BlockKind] = frozenset()  # the payer's user, device, IP or account
    payee_blocked: bool = False
    ip_country: str = ""
    home_country: str = ""
    # The payer's earlier non-declined payments just under the structuring threshold, inside its window.
    earlier_just_under: int = 0


@dataclass(frozen=True)
class Verdict:
    score: int
    decision: Decision
    warning_level: WarningLevel
    reasons: tuple[Reason, ...] = ()

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)


def assess(features: PaymentFeatures, rules: Rules) -> Verdict:
    reasons = [
        *_amount(features, rules),
        *_velocity(features, rules),
        *_new_device(features, rules),
        *_block_list(features, rules),
        *_geography(features, rules),
        *_tier(features, rules),
        *_aml(features, rules),
    ]
    score = min(MAX_SCORE, sum(r.score for r in reasons))
    return Verdict(score, decide(score, rules), warning_level(score, rules.warning_levels), tuple(reasons))


def decide(score: int, rules: Rules) -> Decision:
    if score >= rules.decision.decline_score:
        return Decision.DECLINE
    if score >= rules.decision.review_score:
        return Decision.REVIEW
    return Decision.APPROVE


def warning_level(score: int, levels: WarningThresholds) -> WarningLevel:
    if score >= levels.critical:
        return WarningLevel.CRITICAL
    if score >= levels.high:
        return WarningLevel.HIGH
    if score >= levels.medium:
        return WarningLevel.MEDIUM
    return WarningLevel.LOW


def _amount(f: PaymentFeatures, rules: Rules) -> list[Reason]:
    # Amount rules are tiers: only the highest-scoring one the amount reaches counts.
    hits = [
        r
        for r in rules.amount
        if (floor := r.at_least.get(f.amount.currency)) is not None and f.amount.minor_units >= floor
    ]
    if not hits:
        return []
    top = max(hits, key=lambda r: r.score)
    floor = top.at_least.get(f.amount.currency)
    return [Reason(top.code, top.score, f"amount at least {floor} {f.amount.currency} minor units")]


def _velocity(f: PaymentFeatures, rules: Rules) -> list[Reason]:
    reasons = []
    for rule in rules.velocity:
        tally = f.tallies.get((rule.subject, rule.window_seconds))
        if tally is None:
            continue
        if rule.max_count is not None and tally.count + 1 > rule.max_count:
            reasons.append(
                Reason(
                    rule.code,
                    rule.score,
                    f"{tally.count + 1} payments by the {rule.subject.value} "
                    f"in {rule.window_seconds}s (limit {rule.max_count})",
                )
            )
        limit = rule.max_amount.get(f.amount.currency) if rule.max_amount is not None else None
        if limit is not None and tally.amount + f.amount.minor_units > limit:
            reasons.append(
                Reason(
                    rule.code,
                    rule.score,
                    f"{tally.amount + f.amount.minor_units} {f.amount.currency} "
                    f"minor units by the {rule.subject.value} in {rule.window_seconds}s "
                    f"(limit {limit})",
                )
            )
    return reasons


def _new_device(f: PaymentFeatures, rules: Rules) -> list[Reason]:
    return (
        [Reason("NEW_DEVICE", rules.new_device.score, "first payment from this device for the user")]
        if f.new_device and rules.new_device.score
        else []
    )


def _block_list(f: PaymentFeatures, rules: Rules) -> list[Reason]:
    reasons = [
        Reason(f"BLOCK_LISTED_{kind.value}", rules.block_list.score, f"{kind.value.lower()} is on a block list")
        for kind in sorted(f.blocked)
    ]
    if f.payee_blocked:
        reasons.append(Reason("BLOCK_LISTED_PAYEE", rules.block_list.payee_score, "payee account is on a block list"))
    return reasons


def _geography(f: PaymentFeatures, rules: Rules) -> list[Reason]:
    geo = rules.geography
    reasons = []
    if f.ip_country and f.home_country and f.ip_country != f.home_country and geo.mismatch_score:
        reasons.append(
            Reason(
                "GEO_MISMATCH",
                geo.mismatch_score,
                f"IP country {f.ip_country} differs from home country {f.home_country}",
            )
        )
    if f.ip_country in geo.high_risk_countries and geo.high_risk_score:
        reasons.append(Reason("GEO_HIGH_RISK_COUNTRY", geo.high_risk_score, f"IP country {f.ip_country}"))
    return reasons


def _tier(f: PaymentFeatures, rules: Rules) -> list[Reason]:
    points = rules.tiers.for_tier(f.tier)
    return [Reason(f"TIER_{f.tier.value}", points, f"payer's risk tier is {f.tier.value.lower()}")] if points else []


def _aml(f: PaymentFeatures, rules: Rules) -> list[Reason]:
    # AML findings are always named, even at 0 points: the caller learns a report may be filed.
    reasons = []
    if aml.is_large_value(f.amount, rules.aml):
        reasons.append(Reason("AML_LARGE_VALUE", rules.aml.large_value.score, "large-value transaction"))
    rule = rules.aml.structuring
    if aml.is_structuring(f.amount, f.earlier_just_under, rule):
        reasons.append(
            Reason(
                "AML_STRUCTURING",
                rule.score,
                f"{f.earlier_just_under + 1} payments just under the reporting threshold in {rule.window_seconds}s",
            )
        )
    return reasons


def is_new_device(*, known: bool, user_has_devices: bool) -> bool:
    """A device is new when the user was seen on other devices but never on this one.

    A user's very first device (normally recorded at onboarding) is not
    flagged: it would flag every first payment and tell nothing.
    """
    return user_has_devices and not known
