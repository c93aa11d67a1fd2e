"""Typed client for payments, which freezes accounts for risk's emergency response."""

from __future__ import annotations

import grpc

from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.rpc_errors import reason_of

# FreezeAccount carries an idempotency key, so the channel may retry it.
PAYMENTS_IDEMPOTENT_METHODS = [("finmesh.payments.v1.PaymentsService", "FreezeAccount")]

# Refusals that a retry cannot change: the incident needs an operator.
_FINAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
          grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}

FREEZE_REASON = "RISK_CRITICAL"


class FreezeRefused(Exception):
    """Payments refused the freeze for good (for example ACCOUNT_NOT_FOUND)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
            if error.code() in _FINAL:
                raise FreezeRefused(reason_of(error) or error.code().name) from None
            raise
