"""Transfers balance by construction; anything else is refused before it reaches the store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from finmesh.payments.domain.ledger import Posting, Transfer, TransferKind, move
from finmesh.payments.domain.payments import CaptureMode, PaymentStatus, RiskDecision, decide
from finmesh.platform.errors import FailedPrecondition


@given(st.integers(1, 2**62), st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8))
def test_move_is_balanced(amount: int, source: str, destination: str) -> None:
    """A simple move debits and credits the same amount: postings sum to zero."""
    transfer = move(TransferKind.PAYMENT, source, destination, "CNY", amount)
    assert sum(p.amount for p in transfer.postings) == 0
    assert transfer.amount == amount


def test_unbalanced_or_zero_postings_are_refused() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        Transfer(TransferKind.TRANSFER, "CNY", (Posting("a", -5), Posting("b", 4)))
    with pytest.raises(ValueError, match="out of range"):
        Transfer(TransferKind.TRANSFER, "CNY", (Posting("a", 0), Posting("b", 0)))


@pytest.mark.parametrize(("decision", "mode", "status", "hold", "capture"), [
    (RiskDecision.APPROVE, CaptureMode.AUTOMATIC, PaymentStatus.CAPTURED, False, True),
    (RiskDecision.APPROVE, CaptureMode.MANUAL, PaymentStatus.AUTHORIZED, True, False),
    (RiskDecision.REVIEW, CaptureMode.AUTOMATIC, PaymentStatus.IN_REVIEW, True, False),
])
def test_risk_decision_and_mode_decide_what_money_does(decision, mode, status, hold, capture) -> None:
    """Review always holds funds (never pays before a person decides); approval captures or holds by mode."""
    outcome = decide(decision, mode)
    assert (outcome.status, outcome.hold, outcome.capture) == (status, hold, capture)


def test_decline_refuses_with_reason() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        decide(RiskDecision.DECLINE, CaptureMode.AUTOMATIC)
    assert refused.value.reason == "RISK_DECLINED"
