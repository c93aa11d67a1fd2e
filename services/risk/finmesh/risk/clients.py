"""Typed clients for the services risk's emergency response acts through: payments freezes accounts,
identity raises users' risk tiers."""

from __future__ import annotations

import grpc

from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.rpc.guard import reason_of

# FreezeAccount and SetRiskTier carry an idempotency key, so the channels may retry them.
PAYMENTS_IDEMPOTENT_METHODS = [("finmesh.payments.v1.PaymentsService", "FreezeAccount")]
IDENTITY_IDEMPOTENT_METHODS = [("finmesh.identity.v1.IdentityService", "SetRiskTier")]

# Refusals that a retry cannot change: the incident needs an operator.
_FINAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
          grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}

FREEZE_REASON = "RISK_CRITICAL"
TIER_REASON = "RISK_EVENT"


class Refused(Exception):
    """The other service refused for good (for example ACCOUNT_NOT_FOUND, USER_NOT_FOUND)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FreezeRefused(Refused):
    """Payments refused the freeze."""


class TierRefused(Refused):
    """Identity refused the tier change."""


def _refusal(error: grpc.aio.AioRpcError) -> str | None:
    return (reason_of(error) or error.code().name) if error.code() in _FINAL else None


class PaymentsClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = pay_grpc.PaymentsServiceStub(channel)

    async def freeze(self, account_id: str, idempotency_key: str, timeout: float) -> None:
        """Freeze `account_id`; the key makes a repeated call (after a crash) a replay, not a second freeze."""
        try:
            await self._stub.FreezeAccount(
                pay_pb.FreezeAccountRequest(idempotency_key=idempotency_key, account_id=account_id,
                                            reason=FREEZE_REASON),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            if reason := _refusal(error):
                raise FreezeRefused(reason) from None
            raise


class IdentityClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = id_grpc.IdentityServiceStub(channel)

    async def raise_tier(self, user_id: str, idempotency_key: str, timeout: float) -> None:
        """Set the user's tier to HIGH for a risk event; the key makes a repeated call a replay at identity
        (one tier change and one tier_changed event per incident)."""
        try:
            await self._stub.SetRiskTier(
                id_pb.SetRiskTierRequest(idempotency_key=idempotency_key, user_id=user_id,
                                         tier=id_pb.RISK_TIER_HIGH, reason=TIER_REASON),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            if reason := _refusal(error):
                raise TierRefused(reason) from None
            raise
