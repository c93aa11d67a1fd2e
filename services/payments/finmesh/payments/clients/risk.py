"""Typed client for risk, which decides on every payment."""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from finmesh.common.v1 import money_pb2
from finmesh.payments.domain.payments import RiskDecision
from finmesh.platform.money import Money
from finmesh.platform.rpc.coalescing import Coalescer
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
    """Asks risk for a verdict on each payment.

    Under load, payments waiting for risk at the same time go as one AssessPayments call (see
    finmesh.platform.rpc.coalescing): the per-call cost on both sides is then paid once per batch. While fewer
    than `max_in_flight` calls are out, each payment makes its own AssessPayment call, as before.
    """

    def __init__(self, channel: grpc.aio.Channel, *, max_in_flight: int = 1, max_batch: int = 64) -> None:
        self._stub = risk_grpc.RiskServiceStub(channel)
        self._calls: Coalescer[risk_pb.AssessPaymentRequest, RiskVerdict] = Coalescer(
            self._assess_one, self._assess_many, max_in_flight=max_in_flight, max_batch=max_batch
        )
        self._batch_unsupported_until = 0.0

    @property
    def calls(self) -> Coalescer[risk_pb.AssessPaymentRequest, RiskVerdict]:
        return self._calls

    @property
    def batches_refused_until(self) -> float:
        """time.monotonic() until which risk is sent no AssessPayments (it answered UNIMPLEMENTED); 0: never."""
        return self._batch_unsupported_until

    async def assess(self, facts: PaymentFacts, timeout: float) -> RiskVerdict:
        """Risk's verdict; grpc.aio.AioRpcError when risk did not answer or refused the check."""
        try:
            return await self._calls.submit(_request(facts), timeout)
        except TimeoutError:
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "risk did not answer the batched check in time") from None

    async def close(self) -> None:
        await self._calls.close()

    async def _assess_one(self, request: risk_pb.AssessPaymentRequest, timeout: float) -> RiskVerdict:
        reply = await self._stub.AssessPayment(request, timeout=timeout)
        return _verdict(reply.assessment)

    async def _assess_many(
        self, requests: list[risk_pb.AssessPaymentRequest], contexts: list[contextvars.Context], timeout: float
    ) -> list[RiskVerdict | BaseException]:
        if time.monotonic() < self._batch_unsupported_until:
            return await self._each_alone(requests, contexts, timeout)
        checks = [
            risk_pb.PaymentCheck(payment=request, **_trace_context(context))
            for request, context in zip(requests, contexts, strict=True)
        ]
        try:
            reply = await self._stub.AssessPayments(risk_pb.AssessPaymentsRequest(checks=checks), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            # A risk from before AssessPayments (blue-green rollouts run both for a while): ask again later.
            self._batch_unsupported_until = time.monotonic() + BATCH_RETRY_SECONDS
            return await self._each_alone(requests, contexts, timeout)
        if len(reply.results) != len(requests):  # a broken contract: refuse the checks, as any risk fault is
            raise _error(grpc.StatusCode.UNKNOWN, f"risk answered {len(reply.results)} results for {len(requests)}")
        return [
            _verdict(result.assessment) if result.HasField("assessment") else _refused(result.refusal)
            for result in reply.results
        ]

    async def _each_alone(
        self, requests: list[risk_pb.AssessPaymentRequest], contexts: list[contextvars.Context], timeout: float
    ) -> list[RiskVerdict | BaseException]:
        # Each in its own caller's context, so each call is traced in its payment's trace, as a lone call is.
        calls = [
            asyncio.get_running_loop().create_task(self._assess_one(request, timeout), context=context)
            for request, context in zip(requests, contexts, strict=True)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)


BATCH_RETRY_SECONDS = 60.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _request(facts: PaymentFacts) -> risk_pb.AssessPaymentRequest:
    return risk_pb.AssessPaymentRequest(
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
    )


def _verdict(a: risk_pb.Assessment) -> RiskVerdict:
    decision = _DECISIONS.get(a.decision, RiskDecision.REVIEW)  # an unknown verdict is never an approval
    return RiskVerdict(a.assessment_id, a.score, decision, tuple(r.code for r in a.reasons))


def _refused(refusal: risk_pb.CheckRefusal) -> grpc.aio.AioRpcError:
    """A refused check as the error AssessPayment would have raised for it alone."""
    code = _CODES.get(refusal.code, grpc.StatusCode.UNKNOWN)
    return _error(
        code if code is not grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN, f"{refusal.reason}: {refusal.message}"
    )


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def _trace_context(context: contextvars.Context) -> dict[str, str]:
    """The W3C trace context (traceparent, tracestate) current in a caller's `context`."""
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier, context=context.run(otel_context.get_current))
    return carrier


_TRACE_CONTEXT = TraceContextTextMapPropagator()


# AssessPayment and AssessPayments are idempotent on payment_id, so the channel may retry them.
RISK_IDEMPOTENT_METHODS = [
    ("finmesh.risk.v1.RiskService", "AssessPayment"),
    ("finmesh.risk.v1.RiskService", "AssessPayments"),
]
