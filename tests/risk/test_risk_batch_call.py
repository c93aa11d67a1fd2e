"""AssessPayments: several payments in one call, each judged as AssessPayment judges it, each with its own result."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from opentelemetry.trace import SpanKind

from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import cny, payment, risk_node

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


async def test_each_check_gets_the_verdict_assess_payment_gives_and_a_bad_one_fails_alone(
    databases, tmp_path: Path
) -> None:
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        first, second = payment(minor=10_000), payment(minor=20_000)
        malformed = payment(amount=cny(-5))
        reply = await risk.stub.AssessPayments(
            pb.AssessPaymentsRequest(
                checks=[
                    pb.PaymentCheck(payment=first),
                    pb.PaymentCheck(payment=malformed),
                    pb.PaymentCheck(payment=second),
                ]
            ),
            timeout=10,
        )

        assert [r.WhichOneof("result") for r in reply.results] == ["assessment", "refusal", "assessment"]
        assert [r.assessment.payment_id for r in (reply.results[0], reply.results[2])] == [
            first.payment_id,
            second.payment_id,
        ]
        refusal = reply.results[1].refusal
        assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [v.field for v in refusal.field_violations] == ["checks[1].payment.amount.minor_units"]

        # Idempotent per payment: asking again, alone or batched, gets the recorded assessment.
        again = await risk.assess(first)
        assert again.assessment_id == reply.results[0].assessment.assessment_id
        rebatched = await risk.stub.AssessPayments(
            pb.AssessPaymentsRequest(checks=[pb.PaymentCheck(payment=second)]), timeout=10
        )
        assert rebatched.results[0].assessment == reply.results[2].assessment
        # The malformed payment was never recorded: AssessPayment refuses it the same way.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await risk.assess(malformed)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("count", [0, 65])
async def test_a_batch_of_no_checks_or_too_many_is_invalid(tmp_path: Path, count: int) -> None:
    async with risk_node("sqlite+aiosqlite:///:memory:", tmp_path) as risk:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await risk.stub.AssessPayments(
                pb.AssessPaymentsRequest(checks=[pb.PaymentCheck(payment=payment()) for _ in range(count)]), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "checks" in (refused.value.details() or "")


async def test_each_check_joins_its_payments_trace_and_links_the_batch_call(tmp_path: Path, spans) -> None:
    async with risk_node("sqlite+aiosqlite:///:memory:", tmp_path) as risk:
        traced = pb.PaymentCheck(payment=payment(), traceparent=f"00-{TRACE_ID}-{PARENT_SPAN}-01")
        await risk.stub.AssessPayments(
            pb.AssessPaymentsRequest(checks=[traced, pb.PaymentCheck(payment=payment())]), timeout=10
        )

    batch = next(
        s
        for s in spans.get_finished_spans()
        if s.name == "finmesh.risk.v1.RiskService/AssessPayments" and s.kind is SpanKind.SERVER
    )
    checks = [s for s in spans.get_finished_spans() if s.name == "risk.assess_payment"]
    assert len(checks) == 2
    joined = next(s for s in checks if s.context.trace_id == int(TRACE_ID, 16))
    assert joined.parent.span_id == int(PARENT_SPAN, 16)
    assert [link.context.span_id for link in joined.links] == [batch.context.span_id]
    # A check that carried no trace context stays in the batch call's trace.
    alone = next(s for s in checks if s is not joined)
    assert alone.parent.span_id == batch.context.span_id
