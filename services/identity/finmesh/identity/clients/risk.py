"""Risk as identity calls it: the onboarding tier of a user who just passed the last verification step."""

from __future__ import annotations

import grpc

from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from finmesh.risk.v1 import risk_service_pb2_grpc as risk_grpc

RISK_IDEMPOTENT_METHODS = [("finmesh.risk.v1.RiskService", "AssessOnboarding")]

_TIERS = {risk_pb.RISK_TIER_LOW: "LOW", risk_pb.RISK_TIER_MEDIUM: "MEDIUM", risk_pb.RISK_TIER_HIGH: "HIGH"}


class AssessmentFailed(Exception):
    """Risk refused or did not answer the onboarding assessment; `code` names the gRPC status code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class RiskClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = risk_grpc.RiskServiceStub(channel)

    async def onboarding_tier(self, *, user_id: str, age_years: int, kind: str, timeout: float) -> str:
        """LOW, MEDIUM or HIGH from risk's onboarding assessment ("" for a tier this code does not know)."""
        try:
            reply = await self._stub.AssessOnboarding(
                risk_pb.AssessOnboardingRequest(
                    idempotency_key=f"identity-onboarding-{user_id}",
                    user_id=user_id,
                    age_years=age_years,
                    user_kind=kind.lower(),
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise AssessmentFailed(error.code().name) from None
        return _TIERS.get(reply.tier, "")
