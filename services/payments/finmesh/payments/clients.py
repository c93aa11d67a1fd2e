"""Typed client for risk, which decides on every payment."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from finmesh.common.v1 import money_pb2
from finmesh.payments.domain.payments import RiskDecision
from finmesh.platform.money import Money
from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from finmesh.risk.v1 import risk_service_pb2_grpc as risk_grpc

_DECISIONS = {
    risk_pb.DECISION_APPROVE: RiskDecision.APPROVE,
    risk_pb.DECISION_REVIEW: RiskDecision.REVIEW,
    risk_pb.DECISION_DECLINE: RiskDecision.DECLINE,
}

_TIERS = {"low": risk_pb.RISK_TIER_LOW, "medium": risk_pb.RISK_TIER_MEDIUM, "high": risk_pb.RISK_TIER_HIGH}


@dataclass(frozen=True)
class RiskVerdict:
    assessment_id: str
    score: int
    decision: RiskDecision
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PaymentFacts:
    """What risk needs to know about a payment."""

    payment_id: str
    payer_user_id: str
    payer_account_id: str
    payee_account_id: str
    amount: Money
    device_id: str = ""
    ip_address: str = ""
    ip_country: str = ""
    payer_tier: str = ""  # "low" | "medium" | "high"; anything else is sent as unspecified
    synthetic: bool = False


class RiskClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = risk_grpc.RiskServiceStub(channel)

    async def assess(self, facts: PaymentFacts, timeout: float) -> RiskVerdict:
        reply = await self._stub.AssessPayment(
            risk_pb.AssessPaymentRequest(
                payment_id=facts.payment_id,
                payer_user_id=facts.payer_user_id,
                payer_account_id=facts.payer_account_id,
                payee_account_id=facts.payee_account_id,
                amount=money_pb2.Money(currency_code=facts.amount.currency, minor_units=facts.amount.minor_units),
                device_id=facts.device_id,
                ip_address=facts.ip_address,
                ip_country=facts.ip_country,
                payer_tier=_TIERS.get(facts.payer_tier, risk_pb.RISK_TIER_UNSPECIFIED),
                synthetic=facts.synthetic,
            ),
            timeout=timeout,
        )
        a = reply.assessment
        decision = _DECISIONS.get(a.decision, RiskDecision.REVIEW)  # an unknown verdict is never an approval
        return RiskVerdict(a.assessment_id, a.score, decision, tuple(r.code for r in a.reasons))


# AssessPayment is idempotent on payment_id, so the channel may retry it.
RISK_IDEMPOTENT_METHODS = [("finmesh.risk.v1.RiskService", "AssessPayment")]
