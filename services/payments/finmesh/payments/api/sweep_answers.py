"""The answers the sweeper records (usecases.sweeper) as the RPCs they stand for answer them, so a caller's retry
with the same key replays them byte for byte."""

from __future__ import annotations

from typing import Any

from finmesh.payments.api import convert
from finmesh.payments.api.money_movement import operation_reply
from finmesh.payments.usecases.sweeper import Answer, SweepAnswers
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.storage.idempotency import request_fingerprint


def _expiry_fingerprint(key: str, payment_id: str) -> bytes:
    # An expiry is the VoidPayment the service makes itself.
    return request_fingerprint(pb.VoidPaymentRequest(idempotency_key=key, payment_id=payment_id))


def _voided(reply: Any) -> bool:
    return bool(reply.payment.status == pb.PAYMENT_STATUS_VOIDED)


SWEEP_ANSWERS = SweepAnswers(
    top_up=Answer("TopUp", pb.TopUpResponse, operation_reply(pb.TopUpResponse)),
    payout=Answer("Payout", pb.PayoutResponse, operation_reply(pb.PayoutResponse)),
    expiry=Answer(
        "ExpireAuthorization",
        pb.VoidPaymentResponse,
        lambda state: pb.VoidPaymentResponse(payment=convert.payment(state)),
    ),
    expiry_fingerprint=_expiry_fingerprint,
    voided=_voided,
)
