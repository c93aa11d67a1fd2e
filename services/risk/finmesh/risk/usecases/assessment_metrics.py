"""What risk's assessments tell an operator in numbers: decisions, warning levels, rules fired, batch sizes.

Counted once per payment assessed, after its batch committed: a batch the writer commits again in halves
(finmesh.platform.storage.group_commit) counts its payments once, and a repeated payment id (a caller's
retry) gets its recorded verdict without counting it again. Rollout probes' payments (synthetic) are left
out, as GetRiskIndicators leaves them out: the figures are customers' traffic, whatever a rollout sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from finmesh.platform.observability.metrics import BATCH_BUCKETS, meter
from finmesh.risk.domain.rules import Rules
from finmesh.risk.domain.values import Decision, WarningLevel

_meter = meter("finmesh.risk")

_decisions = _meter.create_counter(
    "finmesh.risk.decisions", unit="{assessment}", description="Payments assessed, by decision"
)
_warnings = _meter.create_counter(
    "finmesh.risk.warnings", unit="{assessment}", description="Payments assessed, by warning level"
)
_rules_fired = _meter.create_counter(
    "finmesh.risk.rules_fired",
    unit="{assessment}",
    description="Payments a rule contributed to, by rule id (past the cap of distinct ids: other)",
)
_batch_size = _meter.create_histogram(
    "finmesh.risk.assessment.batch_size",
    unit="{payment}",
    description="Payments per AssessPayments request (batch=request) and per writer transaction (batch=commit)",
    explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
)

# Rule ids come from the rules file: bounded by one rule set, but every activation may bring new ones, and a
# replica runs for months across many. Each distinct id is a series in Prometheus for as long as the replica
# lives, so past this many the rest share one label; the assessments' reasons still name every rule.
MAX_RULE_LABELS = 100
OTHER_RULE = "other"


class BoundedLabels:
    """Values kept as labels while fewer than `limit` distinct ones were seen; later new ones become `other`."""

    def __init__(self, limit: int, other: str = OTHER_RULE) -> None:
        self._limit, self._other = limit, other
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return self._other


rule_label = BoundedLabels(MAX_RULE_LABELS)


def start_series(rules: Rules) -> None:
    """Every decision and warning level from the first scrape, so rate() and absent() work before traffic;
    and the rules file's own rule ids (the built-in ones, NEW_DEVICE and the like, appear when they fire)."""
    for decision in Decision:
        _decisions.add(0, {"decision": decision.value})
    for level in WarningLevel:
        _warnings.add(0, {"level": level.value})
    for code in [r.code for r in rules.amount] + [r.code for r in rules.velocity]:
        _rules_fired.add(0, {"rule": rule_label(code)})


def assessed(rows: Iterable[Any]) -> None:
    """Count assessment rows just committed (the caller passes only those made in this batch)."""
    for row in rows:
        if row.synthetic:
            continue
        _decisions.add(1, {"decision": row.decision})
        _warnings.add(1, {"level": row.warning_level})
        # A velocity rule can trip twice (count and amount) in one verdict: it fired once for this payment.
        for code in dict.fromkeys(reason["code"] for reason in row.reasons):
            _rules_fired.add(1, {"rule": rule_label(code)})


def request_batch(size: int) -> None:
    """An AssessPayments request of `size` checks."""
    _batch_size.record(size, {"batch": "request"})


def committed_batch(size: int) -> None:
    """A writer transaction that committed `size` payments."""
    _batch_size.record(size, {"batch": "commit"})
