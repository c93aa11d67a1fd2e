"""Payments' risk checks under load go to risk together (AssessPayments); each payment still gets its own verdict."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import func, select

from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.server import Registration, create_server
from finmesh.risk.store.schema import assessments
from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from finmesh.risk.v1 import risk_service_pb2_grpc as risk_grpc
from tests.auth import Issuer
from tests.inprocess import running_mesh
from tests.payments.harness import GENEROUS_LIMITS, Client, Refused, payments_mesh

BURST = 16  # under the default rules' 20 payments per payer in 10 minutes


async def _burst(client: Client, payer: str, payee: str, amounts: list[int]) -> list[pb.Payment]:
    return list(await asyncio.gather(*(client.pay(payer, payee, minor) for minor in amounts)))


async def test_a_burst_is_assessed_in_batches_each_payment_by_its_own_verdict(databases, tmp_path: Path, spans) -> None:
    """With one risk call out at a time, a burst of payments waits and goes in batch calls. Risk records one
    assessment per payment, a payment over the review threshold is held alone, the books balance, and each
    payment's trace holds risk's work on it."""
    async with payments_mesh(databases, tmp_path, risk_max_in_flight=1) as pay:
        c = pay.client
        payer, payee = await c.wallet(), await c.merchant()
        await c.top_up(payer, 10_000_000)
        # The default rules hold payments of 50,000.00 CNY and more for review: one such in the burst.
        amounts = [100 + i for i in range(BURST - 1)] + [5_000_000]
        payments = await _burst(c, payer, payee, amounts)

        calls = pay.app.risk.calls
        print(f"{BURST} payments: {calls.batch_calls} batch calls carried {calls.batched_items} checks")
        assert calls.batch_calls >= 1 and calls.batched_items >= 2
        by_amount = {p.amount.minor_units: p for p in payments}
        assert by_amount[5_000_000].status == pb.PAYMENT_STATUS_IN_REVIEW
        assert all(by_amount[m].status == pb.PAYMENT_STATUS_CAPTURED for m in amounts[:-1])
        paid = sum(amounts[:-1])  # the held payment stays on the payer's account, held
        assert await c.triple(payer) == (10_000_000 - paid - 5_000_000, 5_000_000, 10_000_000 - paid)
        await pay.check_books()

        risk_engine = pay.mesh.services["risk"].app.engine
        ids = [p.payment_id for p in payments]
        async with risk_engine.connect() as conn:
            recorded = await conn.scalar(
                select(func.count()).select_from(assessments).where(assessments.c.payment_id.in_(ids))
            )
        assert recorded == BURST

    checks = [s for s in spans.get_finished_spans() if s.name == "risk.assess_payment"]
    servers = {
        s.context.trace_id: s
        for s in spans.get_finished_spans()
        if s.name == "finmesh.payments.v1.PaymentsService/CreatePayment"
    }
    assert len(checks) == calls.batched_items
    for check in checks:  # a batched check sits in its payment's trace, under the CreatePayment span
        assert check.parent.span_id == servers[check.context.trace_id].context.span_id


class _OldRisk(risk_grpc.RiskServiceServicer):
    """A risk from before AssessPayments: approves every payment, one call each, and counts the calls."""

    def __init__(self) -> None:
        self.singles = 0

    async def AssessPayment(self, request: Any, context: Any) -> Any:
        self.singles += 1
        await asyncio.sleep(0.02)  # long enough for the burst to queue behind the first call
        return risk_pb.AssessPaymentResponse(
            assessment=risk_pb.Assessment(
                assessment_id=uuid.uuid4().hex, payment_id=request.payment_id, decision=risk_pb.DECISION_APPROVE
            )
        )


@asynccontextmanager
async def _payments_before(risk_servicer: Any, databases: Any, tmp_path: Path) -> AsyncIterator[tuple[Client, Any]]:
    """Payments (one risk call out at a time) in front of a risk stand-in: its client and its RiskClient."""
    issuer = await Issuer().start()
    risk = await create_server(
        ServiceSettings(host="127.0.0.1", port=0, **issuer.settings()),
        [
            Registration(
                risk_servicer,
                risk_grpc.add_RiskServiceServicer_to_server,
                risk_pb.DESCRIPTOR.services_by_name["RiskService"],
            )
        ],
    )
    extra = {"tier_limits": GENEROUS_LIMITS, "risk_target": f"127.0.0.1:{risk.port}", "risk_max_in_flight": 1}
    try:
        async with running_mesh(databases, tmp_path, names=("payments",), payments_extra=extra, issuer=issuer) as mesh:
            yield Client(mesh.channel("payments")), mesh.services["payments"].app.risk
    finally:
        await risk.server.stop(0)
        for authorizer in risk.authorizers:
            await authorizer.close()
        await issuer.stop()


async def test_an_older_risk_gets_one_call_per_payment_and_is_asked_for_batches_again_later(
    databases, tmp_path: Path
) -> None:
    old = _OldRisk()
    async with _payments_before(old, databases, tmp_path) as (c, client):
        payer, payee = await c.wallet(), await c.merchant()
        await c.top_up(payer, 1_000_000)
        payments = await _burst(c, payer, payee, [10] * 8)
        assert all(p.status == pb.PAYMENT_STATUS_CAPTURED for p in payments)
        assert old.singles == 8  # the batch was refused UNIMPLEMENTED and each check went alone
        assert client.batches_refused_until > 0

        tried_at = client.batches_refused_until
        payments = await _burst(c, payer, payee, [10] * 8)
        assert all(p.status == pb.PAYMENT_STATUS_CAPTURED for p in payments)
        assert old.singles == 16
        assert client.batches_refused_until == tried_at  # not asked again within the minute


class _ShortRisk(_OldRisk):
    """Answers a batch with one result too few: a broken contract."""

    async def AssessPayments(self, request: Any, context: Any) -> Any:
        return risk_pb.AssessPaymentsResponse(
            results=[
                risk_pb.PaymentCheckResult(
                    assessment=risk_pb.Assessment(
                        assessment_id=uuid.uuid4().hex,
                        payment_id=check.payment.payment_id,
                        decision=risk_pb.DECISION_APPROVE,
                    )
                )
                for check in request.checks[1:]
            ]
        )


async def test_a_batch_answered_with_the_wrong_number_of_results_refuses_its_payments_and_moves_nothing(
    databases, tmp_path: Path
) -> None:
    async with _payments_before(_ShortRisk(), databases, tmp_path) as (c, _):
        payer, payee = await c.wallet(), await c.merchant()
        await c.top_up(payer, 1_000)
        outcomes = await asyncio.gather(*(c.pay(payer, payee, 10) for _ in range(6)), return_exceptions=True)
        refused = [Refused(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        captured = [o for o in outcomes if isinstance(o, pb.Payment)]
        assert len(captured) + len(refused) == 6 and refused, outcomes  # the first went alone; the rest batched
        assert {(r.code, r.reason) for r in refused} == {(grpc.StatusCode.UNAVAILABLE, "RISK_UNAVAILABLE")}
        assert await c.triple(payer) == (1_000 - 10 * len(captured), 0, 1_000 - 10 * len(captured))
