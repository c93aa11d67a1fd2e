"""The rules file: a versioned, declarative policy, validated whole before it may decide anything.

Every section is required and unknown keys are refused, so a typo is an error
instead of a silently disabled rule. Amounts are integer minor units per
ISO 4217 currency (a float is refused: money is never a float); scores are
points out of 100; windows are seconds.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, StrictStr, ValidationError, model_validator

from finmesh.platform.errors import FieldViolation
from finmesh.platform.money import CURRENCIES, MAX_MINOR_UNITS
from finmesh.risk.domain.values import Subject, Tier

MAX_SOURCE_BYTES = 256 * 1024
MAX_VERSION_LENGTH = 40

Score = Annotated[StrictInt, Field(ge=0, le=100)]
Seconds = Annotated[StrictInt, Field(ge=1, le=90 * 86_400)]
Code = Annotated[StrictStr, Field(pattern=r"^[A-Z][A-Z0-9_]{2,63}$")]
# Strict strings: YAML 1.1 reads a bare NO (Norway) as false; refuse it rather than guess.
Country = Annotated[StrictStr, Field(pattern=r"^[A-Z]{2}$")]
Amount = Annotated[StrictInt, Field(gt=0, le=MAX_MINOR_UNITS)]
Currency = Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerCurrency(RootModel[dict[Currency, Amount]]):
    """Amounts in minor units keyed by currency; a currency left out is not covered by the rule."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="after")
    def _check(self) -> PerCurrency:
        unknown = sorted(set(self.root) - set(CURRENCIES))
        if unknown:
            raise ValueError(f"unsupported currencies {unknown}; expected some of {sorted(CURRENCIES)}")
        if not self.root:
            raise ValueError("name at least one currency")
        return self

    def get(self, currency: str) -> int | None:
        return self.root.get(currency)


class DecisionThresholds(_Section):
    review_score: Score
    decline_score: Score

    @model_validator(mode="after")
    def _ordered(self) -> DecisionThresholds:
        if self.review_score > self.decline_score:
            raise ValueError("review_score must not exceed decline_score")
        return self


class WarningThresholds(_Section):
    """Lowest score of each level; anything below `medium` is LOW."""

    medium: Score
    high: Score
    critical: Score

    @model_validator(mode="after")
    def _ordered(self) -> WarningThresholds:
        if not self.medium < self.high < self.critical:
            raise ValueError("levels must rise strictly: medium < high < critical")
        return self


class AmountRule(_Section):
    code: Code
    score: Score
    at_least: PerCurrency


class VelocityRule(_Section):
    """Trips when this payment plus the subject's earlier ones inside the window exceed a limit."""

    code: Code
    subject: Subject
    window_seconds: Seconds
    max_count: Annotated[StrictInt, Field(ge=1)] | None = None
    max_amount: PerCurrency | None = None
    score: Score

    @model_validator(mode="after")
    def _one_limit(self) -> VelocityRule:
        if (self.max_count is None) == (self.max_amount is None):
            raise ValueError("set exactly one of max_count and max_amount")
        return self


class NewDeviceRule(_Section):
    score: Score


class GeographyRule(_Section):
    mismatch_score: Score
    high_risk_countries: list[Country]
    high_risk_score: Score


class TierScores(_Section):
    """Points for the payer's risk tier; `unspecified` when the caller did not say."""

    unspecified: Score
    low: Score
    medium: Score
    high: Score

    def for_tier(self, tier: Tier) -> int:
        return int(getattr(self, tier.value.lower()))


class BlockListRule(_Section):
    # The payer's user, device, IP or account on a block list.
    score: Score
    # The payee's account on a block list: refuse the payment, but the payer
    # may be a victim, so by default this does not reach the critical level
    # that freezes the payer.
    payee_score: Score


class LargeValueRule(_Section):
    at_least: PerCurrency
    score: Score


class StructuringRule(_Section):
    """Several payments just under `threshold` (within margin_bp below it) inside the window."""

    threshold: PerCurrency
    margin_bp: Annotated[StrictInt, Field(ge=1, le=5_000)]
    min_count: Annotated[StrictInt, Field(ge=2, le=1_000)]
    window_seconds: Seconds
    score: Score


class AmlRules(_Section):
    large_value: LargeValueRule
    structuring: StructuringRule


class EmergencyRules(_Section):
    # A second critical warning on an account inside this window joins the
    # open incident: one freeze and one operator alert per incident.
    incident_window_seconds: Seconds


class AgeRule(_Section):
    below: Annotated[StrictInt, Field(ge=0, le=150)]
    score: Score


class SeniorRule(_Section):
    at_least: Annotated[StrictInt, Field(ge=0, le=150)]
    score: Score


class SharedDeviceRule(_Section):
    """The onboarding device is already known for at least `min_other_users` other users."""

    min_other_users: Annotated[StrictInt, Field(ge=1)]
    score: Score


class OnboardingTiers(_Section):
    """Lowest onboarding score for each tier; below `medium` is LOW."""

    medium: Score
    high: Score

    @model_validator(mode="after")
    def _ordered(self) -> OnboardingTiers:
        if not self.medium < self.high:
            raise ValueError("tiers must rise strictly: medium < high")
        return self


class OnboardingRules(_Section):
    tiers: OnboardingTiers
    young: AgeRule
    senior: SeniorRule
    user_kind_scores: dict[Literal["personal", "enterprise", "institution"], Score]
    shared_device: SharedDeviceRule
    high_risk_country_score: Score
    block_list_score: Score

    def kind_score(self, user_kind: str) -> int:
        """Points for a kind of user; 0 for a kind the rules leave out."""
        return next((score for kind, score in self.user_kind_scores.items() if kind == user_kind), 0)


class Rules(_Section):
    version: Annotated[StrictStr, Field(min_length=1, max_length=MAX_VERSION_LENGTH, pattern=r"^[\x21-\x7e]+$")]
    decision: DecisionThresholds
    warning_levels: WarningThresholds
    amount: list[AmountRule]
    velocity: list[VelocityRule]
    new_device: NewDeviceRule
    geography: GeographyRule
    tiers: TierScores
    block_list: BlockListRule
    aml: AmlRules
    emergency: EmergencyRules
    onboarding: OnboardingRules

    @model_validator(mode="after")
    def _unique_codes(self) -> Rules:
        codes = [r.code for r in self.amount] + [r.code for r in self.velocity]
        duplicates = sorted({c for c in codes if codes.count(c) > 1})
        if duplicates:
            raise ValueError(f"rule codes must be unique; repeated: {duplicates}")
        return self

    def velocity_windows(self) -> dict[Subject, set[int]]:
        """The (subject, window) tallies the velocity rules need, so the store counts each once."""
        windows: dict[Subject, set[int]] = {}
        for rule in self.velocity:
            windows.setdefault(rule.subject, set()).add(rule.window_seconds)
        return windows


class RulesError(Exception):
    """The source is not acceptable rules; `violations` say where and why, in words an operator can act on."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


def content_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def parse_rules(source: str, field: str = "source") -> Rules:
    """Parse and validate a YAML (or JSON) rules document; raise RulesError naming every problem."""
    if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise RulesError([FieldViolation(field, f"larger than {MAX_SOURCE_BYTES} bytes")])
    try:
        document = yaml.safe_load(source)
    except yaml.YAMLError as error:
        raise RulesError([FieldViolation(field, f"not valid YAML or JSON: {_yaml_problem(error)}")]) from None
    except (ValueError, RecursionError):
        # The parser's own limits, reached by a caller's document: int() refuses numbers over 4300 digits,
        # and nesting deeper than the stack (a few thousand "[") overflows it.
        raise RulesError(
            [FieldViolation(field, "not valid YAML or JSON: a number too long or nesting too deep")]
        ) from None
    if not isinstance(document, dict):
        raise RulesError([FieldViolation(field, "must be a mapping with version, decision, ... at the top")])
    try:
        return Rules.model_validate(document)
    except ValidationError as error:
        raise RulesError([_violation(field, e) for e in error.errors(include_url=False)]) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or type(error).__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


def _violation(field: str, error: Any) -> FieldViolation:
    path = field
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"].endswith("_type") or error["type"] in ("int_from_float", "literal_error", "enum"):
        # Say what was read: YAML's surprises (NO -> false, 1.5 for money) are easier to fix when seen.
        message += f" (got {_short(error.get('input'))})"
    return FieldViolation(path, message)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
