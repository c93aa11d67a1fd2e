"""Synthetic traffic (W3C baggage `synthetic=true`) moves money only between the configured test accounts,
reaches risk marked synthetic, and carries its mark from payments on to risk."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import select

from finmesh.payments.store.schema import outbox
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.config import ServiceSettings
from finmesh.platform.observability import synthetic
from finmesh.platform.rpc.server import Registration, create_server
from finmesh.platform.storage.db import create_engine
from finmesh.risk.store.schema import assessments
from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from finmesh.risk.v1 import risk_service_pb2_grpc as risk_grpc
from tests.auth import Issuer
from tests.inprocess import running_mesh
from tests.payments.harness import GENEROUS_LIMITS, Client, key, money, payments_mesh, refusal

MARK = synthetic.call_metadata()
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, "SYNTHETIC_REAL_ACCOUNT")


def _pay(payer: str, payee: str, minor: int, idem: str = "") -> pb.CreatePaymentRequest:
    return pb.CreatePaymentRequest(
        idempotency_key=idem or key(),
        payer_account_id=payer,
        payee_account_id=payee,
        amount=money(minor),
        capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
    )


async def _risk_synthetic_flags(url: str) -> dict[str, int]:
    """payment id -> the synthetic flag risk stored with its assessment."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(assessments.c.payment_id, assessments.c.synthetic))).all()
    finally:
        await engine.dispose()
    return {row.payment_id: row.synthetic for row in rows}


async def test_synthetic_payments_move_money_between_test_accounts_only(databases, tmp_path: Path) -> None:
    """Marked calls between test accounts succeed and reach risk (and the outbox) as synthetic; a marked call
    touching a customer's account is refused with SYNTHETIC_REAL_ACCOUNT and changes no balance; an unmarked
    payment between test accounts is synthetic all the same."""
    probe_a, probe_b, customer = f"probe-{uuid.uuid4().hex[:8]}", f"probe-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    async with payments_mesh(databases, tmp_path, synthetic_owner_ids=[probe_a, probe_b]) as pay:
        c, s = pay.client, pay.client.stub
        a, b, real = await c.wallet(probe_a), await c.wallet(probe_b), await c.wallet(customer)
        await s.TopUp(
            pb.TopUpRequest(idempotency_key=key(), account_id=a, channel="test_bank", amount=money(10_000)),
            metadata=MARK,
        )
        await c.top_up(real, 10_000)

        marked = (await s.CreatePayment(_pay(a, b, 300), metadata=MARK)).payment
        unmarked = await c.pay(a, b, 200)
        assert (marked.status, unmarked.status) == (pb.PAYMENT_STATUS_CAPTURED, pb.PAYMENT_STATUS_CAPTURED)
        before = {acct: await c.triple(acct) for acct in (a, b, real)}

        refused_calls = {
            "pay a customer": s.CreatePayment(_pay(a, real, 100), metadata=MARK),
            "paid by a customer": s.CreatePayment(_pay(real, b, 100), metadata=MARK),
            "top up a customer": s.TopUp(
                pb.TopUpRequest(idempotency_key=key(), account_id=real, channel="test_bank", amount=money(1)),
                metadata=MARK,
            ),
            "pay out a customer": s.Payout(
                pb.PayoutRequest(
                    idempotency_key=key(),
                    account_id=real,
                    channel="test_bank",
                    amount=money(1),
                    destination_token="tok",
                ),
                metadata=MARK,
            ),
            "batch touching a customer": s.BatchCreateTransfers(
                pb.BatchCreateTransfersRequest(
                    idempotency_key=key(),
                    transfers=[pb.TransferSpec(reference="r1", from_account_id=a, to_account_id=real, amount=money(1))],
                ),
                metadata=MARK,
            ),
        }
        for name, call in refused_calls.items():
            refused = await refusal(call)
            assert (refused.code, refused.reason) == REFUSED, (name, refused)
        real_payment = await c.pay(real, a, 50)  # a real customer paying a test account: real, so not marked
        refused = await refusal(
            s.RefundPayment(
                pb.RefundPaymentRequest(idempotency_key=key(), payment_id=real_payment.payment_id), metadata=MARK
            )
        )
        assert (refused.code, refused.reason) == REFUSED
        after = {acct: await c.triple(acct) for acct in (a, b, real)}
        assert after[b] == before[b] and after[real][0] == before[real][0] - 50, (before, after)
        await pay.check_books()

        flags = await _risk_synthetic_flags(pay.mesh.services["risk"].database_url)
        assert (flags[marked.payment_id], flags[unmarked.payment_id], flags[real_payment.payment_id]) == (1, 1, 0)
        async with pay.db.engine.connect() as conn:
            events = (
                await conn.execute(
                    select(outbox.c.event_type, outbox.c.payload).where(outbox.c.event_type.like("payments.payment.%"))
                )
            ).all()
        by_payment = {e.payload["payment_id"]: e.payload for e in events}
        assert by_payment[marked.payment_id].get("synthetic") is True
        assert by_payment[unmarked.payment_id].get("synthetic") is True
        assert "synthetic" not in by_payment[real_payment.payment_id]


class _BaggageRecordingRisk(risk_grpc.RiskServiceServicer):
    """Approves every payment and records what the platform made of each call's baggage."""

    def __init__(self) -> None:
        self.marks: list[tuple[bool, bool]] = []

    async def AssessPayment(self, request: Any, context: Any) -> Any:
        self.marks.append((synthetic.is_synthetic(), request.synthetic))
        return risk_pb.AssessPaymentResponse(
            assessment=risk_pb.Assessment(
                assessment_id=uuid.uuid4().hex, payment_id=request.payment_id, decision=risk_pb.DECISION_APPROVE
            )
        )


async def test_the_synthetic_mark_travels_from_payments_to_risk(databases, tmp_path: Path) -> None:
    """The caller's baggage is current in payments' handler and forwarded on its call to risk, whose handler
    sees it through finmesh.platform.observability.synthetic; an unmarked call carries no mark."""
    issuer = await Issuer().start()
    recorder = _BaggageRecordingRisk()
    risk = await create_server(
        ServiceSettings(host="127.0.0.1", port=0, **issuer.settings()),
        [
            Registration(
                recorder,
                risk_grpc.add_RiskServiceServicer_to_server,
                risk_pb.DESCRIPTOR.services_by_name["RiskService"],
            )
        ],
    )
    probe_a, probe_b = "probe-a", "probe-b"
    extra = {
        "tier_limits": GENEROUS_LIMITS,
        "risk_target": f"127.0.0.1:{risk.port}",
        "synthetic_owner_ids": [probe_a, probe_b],
    }
    try:
        async with running_mesh(databases, tmp_path, names=("payments",), payments_extra=extra, issuer=issuer) as mesh:
            c = Client(mesh.channel("payments"))
            a, b = await c.wallet(probe_a), await c.wallet(probe_b)
            await c.top_up(a, 1_000)
            await c.stub.CreatePayment(_pay(a, b, 10), metadata=(("baggage", "tenant=x, synthetic=true;p=1"),))
            await c.pay(a, b, 10)
        assert recorder.marks == [(True, True), (False, True)]
    finally:
        await risk.server.stop(0)
        for authorizer in risk.authorizers:
            await authorizer.close()
        await issuer.stop()


async def test_the_mark_is_honoured_on_a_server_running_without_tracing(databases, tmp_path: Path) -> None:
    """With FINMESH_TRACING_ENABLED=false no baggage is extracted into the context; payments reads the mark from
    the call's metadata instead, so a marked call on a customer's account is still refused."""
    probe, customer = f"probe-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    async with payments_mesh(databases, tmp_path, synthetic_owner_ids=[probe], tracing_enabled=False) as pay:
        c = pay.client
        test_wallet, real = await c.wallet(probe), await c.wallet(customer)
        await c.top_up(test_wallet, 1_000)
        refused = await refusal(c.stub.CreatePayment(_pay(test_wallet, real, 10), metadata=MARK))
        assert (refused.code, refused.reason) == REFUSED
        assert await c.triple(real) == (0, 0, 0)
