"""Scoring, AML and onboarding logic without I/O: examples and properties (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from finmesh.platform.money import Money
from finmesh.risk.config import DEFAULT_RULES_FILE
from finmesh.risk.domain import aml
from finmesh.risk.domain.onboarding import OnboardingFacts, assess_onboarding, tier_for
from finmesh.risk.domain.rules import Rules, parse_rules
from finmesh.risk.domain.scoring import PaymentFeatures, Tally, assess, decide, is_new_device, warning_level
from finmesh.risk.domain.values import AmlKind, BlockKind, Decision, Subject, Tier, WarningLevel

RULES: Rules = parse_rules(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))
ORDER = {Decision.APPROVE: 0, Decision.REVIEW: 1, Decision.DECLINE: 2}

amounts = st.integers(min_value=1, max_value=10**12)
tallies = st.builds(Tally, count=st.integers(0, 10_000), amount=st.integers(0, 10**12))
features = st.builds(
    PaymentFeatures,
    amount=st.builds(Money, st.sampled_from(["CNY", "USD", "JPY"]), amounts),
    tier=st.sampled_from(list(Tier)),
    tallies=st.dictionaries(
        st.sampled_from([(Subject.USER, 600), (Subject.USER, 86400), (Subject.DEVICE, 600), (Subject.IP, 60)]), tallies
    ),
    new_device=st.booleans(),
    blocked=st.frozensets(st.sampled_from(list(BlockKind))),
    payee_blocked=st.booleans(),
    ip_country=st.sampled_from(["", "CN", "US", "KP"]),
    home_country=st.sampled_from(["", "CN", "US"]),
    earlier_just_under=st.integers(0, 10),
)

# No deadline: the shared 2-core machines stall now and then; a slow example is not a wrong one.
PROPERTY = settings(deadline=None, max_examples=60)


@PROPERTY
@given(features)
def test_score_is_the_capped_sum_of_named_reasons(f: PaymentFeatures) -> None:
    """The score is the sum of the reasons' points capped at 100, and decides decision and level."""
    verdict = assess(f, RULES)
    assert verdict.score == min(100, sum(r.score for r in verdict.reasons))
    assert 0 <= verdict.score <= 100
    assert verdict.decision is decide(verdict.score, RULES)
    assert verdict.warning_level is warning_level(verdict.score, RULES.warning_levels)
    assert all(r.code and r.code == r.code.upper() for r in verdict.reasons)


@PROPERTY
@given(st.integers(0, 100), st.integers(0, 100))
def test_decision_and_level_never_fall_as_the_score_rises(low: int, high: int) -> None:
    """A higher score never yields a milder decision or a lower warning level."""
    low, high = sorted((low, high))
    assert ORDER[decide(low, RULES)] <= ORDER[decide(high, RULES)]
    levels = RULES.warning_levels
    assert warning_level(low, levels).rank <= warning_level(high, levels).rank


@PROPERTY
@given(features, st.sampled_from(list(BlockKind)))
def test_a_block_list_hit_on_the_payer_is_critical(f: PaymentFeatures, kind: BlockKind) -> None:
    """Any payer-side block list hit declines at CRITICAL under the default rules (it freezes the account)."""
    verdict = assess(PaymentFeatures(**{**vars(f), "blocked": f.blocked | {kind}}), RULES)
    assert (verdict.decision, verdict.warning_level) == (Decision.DECLINE, WarningLevel.CRITICAL)


@PROPERTY
@given(st.integers(0, 60), st.integers(1, 50))
def test_velocity_count_trips_exactly_past_the_limit(earlier: int, limit: int) -> None:
    """A count rule trips when earlier payments plus this one exceed max_count, never before."""
    rule = {"code": "V_USER", "subject": "user", "window_seconds": 600, "max_count": limit, "score": 50}
    rules = RULES.model_copy(update={"velocity": [type(RULES.velocity[0]).model_validate(rule)]})
    f = PaymentFeatures(Money("CNY", 100), tallies={(Subject.USER, 600): Tally(count=earlier)})
    assert ("V_USER" in assess(f, rules).codes) == (earlier + 1 > limit)


def test_velocity_needs_a_tally_and_amount_limits_its_currency() -> None:
    """No tally (no device id given) means no velocity reason; amount limits apply per currency."""
    assert assess(PaymentFeatures(Money("CNY", 100)), RULES).codes == ()
    over = PaymentFeatures(Money("CNY", 1), tallies={(Subject.USER, 86400): Tally(1, 50_000_000)})
    assert assess(over, RULES).codes == ("VELOCITY_USER_AMOUNT",)
    within_eur = PaymentFeatures(Money("EUR", 1), tallies={(Subject.USER, 86400): Tally(1, 6_499_999)})
    assert assess(within_eur, RULES).codes == ()  # EUR has its own, lower limit: 6,500,000 minor units
    past_eur = PaymentFeatures(Money("EUR", 2), tallies={(Subject.USER, 86400): Tally(1, 6_499_999)})
    assert assess(past_eur, RULES).codes == ("VELOCITY_USER_AMOUNT",)


def test_only_the_highest_amount_tier_scores() -> None:
    """A very large payment scores AMOUNT_VERY_LARGE alone, not both tiers."""
    verdict = assess(PaymentFeatures(Money("CNY", 20_000_000)), RULES)
    assert [r.code for r in verdict.reasons if r.code.startswith("AMOUNT")] == ["AMOUNT_VERY_LARGE"]


def test_new_device_needs_an_earlier_device() -> None:
    """Only a device other than the user's known ones is new; a user's first device is not."""
    assert is_new_device(known=False, user_has_devices=True)
    assert not is_new_device(known=False, user_has_devices=False)
    assert not is_new_device(known=True, user_has_devices=True)


@PROPERTY
@given(st.integers(1, 10_000_000), st.integers(0, 5))
def test_structuring_needs_min_count_just_under(minor: int, earlier: int) -> None:
    """Structuring is a payment inside [threshold - margin, threshold) completing min_count such payments."""
    rule = RULES.aml.structuring
    low, high = aml.just_under_range("CNY", rule) or (0, 0)
    expected = low <= minor < high and earlier + 1 >= rule.min_count
    assert aml.is_structuring(Money("CNY", minor), earlier, rule) == expected


def test_reports_due_skip_declines_and_repeats() -> None:
    """Declined payments file nothing; one structuring report per window; large values always."""
    big, under = Money("CNY", 5_000_000), Money("CNY", 4_900_000)
    assert aml.reports_due(big, Decision.APPROVE, 0, False, RULES.aml) == [AmlKind.LARGE_VALUE]
    assert aml.reports_due(big, Decision.DECLINE, 0, False, RULES.aml) == []
    assert aml.reports_due(under, Decision.REVIEW, 2, False, RULES.aml) == [AmlKind.STRUCTURING]
    assert aml.reports_due(under, Decision.REVIEW, 2, True, RULES.aml) == []
    assert aml.reports_due(Money("CNY", 4_000_000), Decision.APPROVE, 9, False, RULES.aml) == []


@PROPERTY
@given(
    st.integers(0, 150),
    st.sampled_from(["personal", "enterprise", "institution"]),
    st.integers(0, 10),
    st.frozensets(st.sampled_from([BlockKind.USER, BlockKind.DEVICE, BlockKind.IP])),
)
def test_onboarding_tier_follows_its_score(age: int, kind: str, others: int, blocked) -> None:
    """The tier is the band the capped score falls in; any block list hit makes the user HIGH."""
    verdict = assess_onboarding(OnboardingFacts(age, kind, "", others, blocked), RULES)
    assert verdict.score == min(100, sum(r.score for r in verdict.reasons))
    assert verdict.tier is tier_for(verdict.score, RULES)
    if blocked:
        assert verdict.tier is Tier.HIGH
