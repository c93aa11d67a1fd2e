"""Risk's metrics through a real server: decisions, warning levels and rules counted once per payment assessed,
batch sizes per request and per writer transaction, and rule labels that stay bounded."""

from __future__ import annotations

from pathlib import Path

from finmesh.risk.usecases.assessment_metrics import BoundedLabels
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests import metrics
from tests.risk.harness import payment, risk_node

DECISIONS = "finmesh.risk.decisions"
WARNINGS = "finmesh.risk.warnings"
RULES = "finmesh.risk.rules_fired"
BATCH = "finmesh.risk.assessment.batch_size"

RULE_IDS = ("AMOUNT_LARGE", "AMOUNT_VERY_LARGE", "AML_LARGE_VALUE", "GEO_HIGH_RISK_COUNTRY", "GEO_MISMATCH")


def reading() -> dict[tuple[str, str, str], float]:
    labels = [(DECISIONS, "decision", d) for d in ("APPROVE", "REVIEW", "DECLINE")]
    labels += [(WARNINGS, "level", lv) for lv in ("LOW", "MEDIUM", "HIGH", "CRITICAL")]
    labels += [(RULES, "rule", r) for r in RULE_IDS]
    return {(name, key, v): metrics.value(name, **{key: v}) for name, key, v in labels}


def delta(before: dict[tuple[str, str, str], float]) -> dict[tuple[str, str, str], float]:
    after = reading()
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}


async def test_assessments_count_decisions_levels_and_rules_once_each(databases, tmp_path: Path) -> None:
    """Three payments, one per decision, count once each by decision, level and rule; a repeated payment id
    and a rollout probe's payment count nothing; every decision, level and rule id of the rules file is a
    series before any traffic."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        levels = metrics.attribute_values(WARNINGS, "level")
        assert {"LOW", "MEDIUM", "HIGH", "CRITICAL"} <= levels
        assert {"APPROVE", "REVIEW", "DECLINE"} <= metrics.attribute_values(DECISIONS, "decision")
        assert {"VELOCITY_IP_COUNT", "AMOUNT_VERY_LARGE"} <= metrics.attribute_values(RULES, "rule")  # from the file
        before = reading()
        commits = metrics.histogram_sum(BATCH, batch="commit")

        small = payment(minor=12_345)
        assert (await risk.assess(small)).decision == pb.DECISION_APPROVE
        big = await risk.assess(payment(minor=6_000_000))  # AMOUNT_LARGE 40 (+ AML_LARGE_VALUE 0): MEDIUM
        assert (big.decision, big.warning_level) == (pb.DECISION_REVIEW, pb.WARNING_LEVEL_MEDIUM)
        # AMOUNT_VERY_LARGE 60 + GEO_HIGH_RISK_COUNTRY 60, capped at 100: declined, critical.
        worst = await risk.assess(payment(minor=20_000_000, ip_country="KP", home_country="KP"))
        assert (worst.decision, worst.warning_level) == (pb.DECISION_DECLINE, pb.WARNING_LEVEL_CRITICAL)
        await risk.assess(small)  # a retry: the recorded verdict, not a second assessment
        await risk.assess(payment(minor=20_000_000, synthetic=True))  # a rollout probe's payment

        assert delta(before) == {
            (DECISIONS, "decision", "APPROVE"): 1,
            (DECISIONS, "decision", "REVIEW"): 1,
            (DECISIONS, "decision", "DECLINE"): 1,
            (WARNINGS, "level", "LOW"): 1,
            (WARNINGS, "level", "MEDIUM"): 1,
            (WARNINGS, "level", "CRITICAL"): 1,
            (RULES, "rule", "AMOUNT_LARGE"): 1,
            (RULES, "rule", "AMOUNT_VERY_LARGE"): 1,
            (RULES, "rule", "AML_LARGE_VALUE"): 2,
            (RULES, "rule", "GEO_HIGH_RISK_COUNTRY"): 1,
        }
        # Every payment the writer took, the retry and the probe too, went through a committed transaction.
        assert metrics.histogram_sum(BATCH, batch="commit") - commits == 5


async def test_assess_payments_records_the_request_size_and_its_verdicts(databases, tmp_path: Path) -> None:
    """AssessPayments with four checks: one request of 4, and four decisions (in one or more writer batches)."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        requests = metrics.value(BATCH, batch="request")
        sizes = metrics.histogram_sum(BATCH, batch="request")
        commits = metrics.histogram_sum(BATCH, batch="commit")
        approved = metrics.value(DECISIONS, decision="APPROVE")
        checks = [pb.PaymentCheck(payment=payment(minor=1_000 + i)) for i in range(4)]
        reply = await risk.stub.AssessPayments(pb.AssessPaymentsRequest(checks=checks), timeout=10)
        assert [r.assessment.decision for r in reply.results] == [pb.DECISION_APPROVE] * 4
        assert metrics.value(BATCH, batch="request") - requests == 1
        assert metrics.histogram_sum(BATCH, batch="request") - sizes == 4
        assert metrics.histogram_sum(BATCH, batch="commit") - commits == 4
        assert metrics.value(DECISIONS, decision="APPROVE") - approved == 4


def test_rule_labels_stay_bounded_past_the_cap() -> None:
    """Rule ids are the operator's to choose, new with each rule set: past the cap they share `other`."""
    label = BoundedLabels(3)
    assert [label(code) for code in ("A", "B", "A", "C", "D", "B", "E")] == ["A", "B", "A", "C", "other", "B", "other"]
