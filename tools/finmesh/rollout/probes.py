"""gRPC probes of one color through a port-forward: health, a read call, a synthetic payment."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finmesh.cli.tls import open_channel
from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.rollout.plan import grpc_service_name

# A payment "went through" when the new code captured it or sent it to review
# (funds held); a decline or any other state means the synthetic path is broken.
_ACCEPTED = {pay_pb.PAYMENT_STATUS_CAPTURED, pay_pb.PAYMENT_STATUS_IN_REVIEW}


@dataclass(frozen=True)
class SyntheticPayment:
    """Dedicated test accounts: each synthetic payment moves `amount` minor units from payer to payee."""

    payer_account_id: str
    payee_account_id: str
    amount: int = 1
    currency: str = "CNY"


class Prober:
    """Probe calls against one target. Each method returns None on success, else a short failure reason."""

    def __init__(
        self,
        service: str,
        target: str,
        *,
        server_name: str = "",
        synthetic: SyntheticPayment | None = None,
        timeout: float = 3.0,
        token: str = "",
    ) -> None:
        self._service = service
        self._synthetic = synthetic
        # The test accounts' owner's access token, for the read and the synthetic payment (never logged).
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._timeout = timeout
        self._channel = open_channel(target, server_name=server_name)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def probe(self) -> str | None:
        """Health of the server and of its gRPC service, then a read call (payments: the payer's account)."""
        health = health_pb2_grpc.HealthStub(self._channel)
        try:
            for name in ("", grpc_service_name(self._service)):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=self._timeout)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            if self._synthetic is not None:
                pay_grpc.PaymentsServiceStub(self._channel).GetAccount(
                    pay_pb.GetAccountRequest(account_id=self._synthetic.payer_account_id),
                    timeout=self._timeout,
                    metadata=self._metadata,
                )
        except grpc.RpcError as error:
            return error.code().name
        return None

    def synthetic_call(self) -> str | None:
        """A synthetic payment between the test accounts, read back by id (payments only; others: no-op)."""
        if self._synthetic is None:
            return None
        s = self._synthetic
        stub = pay_grpc.PaymentsServiceStub(self._channel)
        try:
            created = stub.CreatePayment(
                pay_pb.CreatePaymentRequest(
                    idempotency_key=f"rollout-synthetic-{uuid.uuid4().hex}",
                    payer_account_id=s.payer_account_id,
                    payee_account_id=s.payee_account_id,
                    amount=money_pb2.Money(currency_code=s.currency, minor_units=s.amount),
                    capture_mode=pay_pb.CAPTURE_MODE_AUTOMATIC,
                    description="finmesh rollout synthetic payment",
                ),
                timeout=self._timeout,
                metadata=self._metadata,
            ).payment
            read = stub.GetPayment(
                pay_pb.GetPaymentRequest(payment_id=created.payment_id), timeout=self._timeout, metadata=self._metadata
            ).payment
        except grpc.RpcError as error:
            return f"synthetic payment: {error.code().name}: {error.details()}"
        if read.payment_id != created.payment_id or read.status not in _ACCEPTED:
            status = pay_pb.PaymentStatus.Name(read.status)
            return f"synthetic payment {created.payment_id} read back as {status}"
        return None
