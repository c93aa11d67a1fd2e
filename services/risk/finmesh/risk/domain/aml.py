"""Anti-money-laundering checks: large-value payments and structuring just under a reporting threshold."""

from __future__ import annotations

from finmesh.platform.money import Money
from finmesh.risk.domain.rules import AmlRules, StructuringRule
from finmesh.risk.domain.values import AmlKind, Decision
from finmesh.risk.domain.windows import just_under_floor


def is_large_value(amount: Money, rules: AmlRules) -> bool:
    floor = rules.large_value.at_least.get(amount.currency)
    return floor is not None and amount.minor_units >= floor


def just_under_range(currency: str, rule: StructuringRule) -> tuple[int, int] | None:
    """[low, high) of amounts that count as "just under" the threshold, or None if the currency is not covered."""
    threshold = rule.threshold.get(currency)
    if threshold is None:
        return None
    return just_under_floor(threshold, rule.margin_bp), threshold


def is_just_under(amount: Money, rule: StructuringRule) -> bool:
    bounds = just_under_range(amount.currency, rule)
    return bounds is not None and bounds[0] <= amount.minor_units < bounds[1]


def is_structuring(amount: Money, earlier_just_under: int, rule: StructuringRule) -> bool:
    """This payment is just under the threshold and completes min_count such payments inside the window."""
    return is_just_under(amount, rule) and earlier_just_under + 1 >= rule.min_count


def reports_due(
    amount: Money, decision: Decision, earlier_just_under: int, structuring_reported: bool, rules: AmlRules
) -> list[AmlKind]:
    """Which AML reports this payment files.

    Declined payments move no money, so they file nothing. Structuring is
    reported once per window per payer: the first payment that completes the
    pattern files it, later ones inside the same window are already covered.
    """
    if decision is Decision.DECLINE:
        return []
    due = []
    if is_large_value(amount, rules):
        due.append(AmlKind.LARGE_VALUE)
    if not structuring_reported and is_structuring(amount, earlier_just_under, rules.structuring):
        due.append(AmlKind.STRUCTURING)
    return due
