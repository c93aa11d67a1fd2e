"""Payments as risk's emergency response calls it: freezing the payer's account."""

from __future__ import annotations

import grpc

from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.risk.clients.refusals import Refused, final_reason

# FreezeAccount carries an idempotency key, so the channel may retry it.
PAYMENTS_IDEMPOTENT_METHODS = [("finmesh.payments.v1.PaymentsService", "FreezeAccount")]

FREEZE_REASON = "RISK_CRITICAL"


class FreezeRefused(Refused):
    """Payments refused the freeze."""


class PaymentsClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = pay_grpc.PaymentsServiceStub(channel)

    async def freeze(self, account_id: str, idempotency_key: str, timeout: float) -> None:
        """Freeze `account_id`; the key makes a repeated call (after a crash) a replay, not a second freeze."""
        try:
            await self._stub.FreezeAccount(
                pay_pb.FreezeAccountRequest(
                    idempotency_key=idempotency_key, account_id=account_id, reason=FREEZE_REASON
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            if reason := final_reason(error):
                raise FreezeRefused(reason) from None
            raise
