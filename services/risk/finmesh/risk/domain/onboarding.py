"""Onboarding assessment: a new user's facts in, the risk tier that sets their limits out."""

from __future__ import annotations

from dataclasses import dataclass

from finmesh.risk.domain.rules import Rules
from finmesh.risk.domain.scoring import MAX_SCORE
from finmesh.risk.domain.values import BlockKind, Reason, Tier

USER_KINDS = ("personal", "enterprise", "institution")


@dataclass(frozen=True)
class OnboardingFacts:
    age_years: int
    user_kind: str
    ip_country: str = ""
    # Other users this device was already seen for: account farms share devices.
    other_users_on_device: int = 0
    blocked: frozenset[BlockKind] = frozenset()


@dataclass(frozen=True)
class OnboardingVerdict:
    tier: Tier
    score: int
    reasons: tuple[Reason, ...] = ()


def assess_onboarding(facts: OnboardingFacts, rules: Rules) -> OnboardingVerdict:
    r = rules.onboarding
    reasons = []
    if facts.age_years < r.young.below and r.young.score:
        reasons.append(Reason("ONBOARDING_YOUNG", r.young.score, f"younger than {r.young.below}"))
    if facts.age_years >= r.senior.at_least and r.senior.score:
        reasons.append(Reason("ONBOARDING_SENIOR", r.senior.score, f"aged {r.senior.at_least} or more"))
    kind_score = r.kind_score(facts.user_kind)
    if kind_score:
        reasons.append(Reason(f"ONBOARDING_KIND_{facts.user_kind.upper()}", kind_score, f"{facts.user_kind} user"))
    if facts.other_users_on_device >= r.shared_device.min_other_users and r.shared_device.score:
        reasons.append(
            Reason(
                "ONBOARDING_SHARED_DEVICE",
                r.shared_device.score,
                f"device already used by {facts.other_users_on_device} other users",
            )
        )
    if facts.ip_country in rules.geography.high_risk_countries and r.high_risk_country_score:
        reasons.append(
            Reason("ONBOARDING_HIGH_RISK_COUNTRY", r.high_risk_country_score, f"IP country {facts.ip_country}")
        )
    reasons.extend(
        Reason(f"BLOCK_LISTED_{kind.value}", r.block_list_score, f"{kind.value.lower()} is on a block list")
        for kind in sorted(facts.blocked)
        if r.block_list_score
    )
    score = min(MAX_SCORE, sum(x.score for x in reasons))
    return OnboardingVerdict(tier_for(score, rules), score, tuple(reasons))


def tier_for(score: int, rules: Rules) -> Tier:
    tiers = rules.onboarding.tiers
    if score >= tiers.high:
        return Tier.HIGH
    if score >= tiers.medium:
        return Tier.MEDIUM
    return Tier.LOW
