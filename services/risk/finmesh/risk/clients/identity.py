"""Identity as risk's emergency response calls it: raising the payer's risk tier."""

from __future__ import annotations

import grpc

from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.risk.clients.refusals import Refused, final_reason

# SetRiskTier carries an idempotency key, so the channel may retry it.
IDENTITY_IDEMPOTENT_METHODS = [("finmesh.identity.v1.IdentityService", "SetRiskTier")]

TIER_REASON = "RISK_EVENT"


class TierRefused(Refused):
    """Identity refused the tier change."""


class IdentityClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = id_grpc.IdentityServiceStub(channel)

    async def raise_tier(self, user_id: str, idempotency_key: str, timeout: float) -> None:
        """Set the user's tier to HIGH for a risk event; the key makes a repeated call a replay at identity
        (one tier change and one tier_changed event per incident)."""
        try:
            await self._stub.SetRiskTier(
                id_pb.SetRiskTierRequest(
                    idempotency_key=idempotency_key, user_id=user_id, tier=id_pb.RISK_TIER_HIGH, reason=TIER_REASON
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            if reason := final_reason(error):
                raise TierRefused(reason) from None
            raise
