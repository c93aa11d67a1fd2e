"""Payments test harness: payments and risk on ephemeral ports, a gRPC client with helpers, database peeks."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, settings
from sqlalchemy import select, text

from finmesh.common.v1 import money_pb2
from finmesh.payments.store.ledger import totals_by_currency
from finmesh.payments.store.schema import accounts
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.rpc.guard import field_violations_of, reason_of
from finmesh.platform.storage.db import create_engine
from tests.inprocess import InProcessMesh, running_mesh

# "payments" keeps the whole directory within its time budget on two cores;
# FINMESH_HYPOTHESIS_PROFILE=payments-thorough runs many more sequences.
settings.register_profile(
    "payments",
    max_examples=int(os.environ.get("FINMESH_PROPERTY_EXAMPLES", "20")),
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "payments-thorough",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def payments_profile() -> settings:
    return settings.get_profile(os.environ.get("FINMESH_HYPOTHESIS_PROFILE", "payments"))


# Limits far above anything a test pays, unless a test sets its own.
GENEROUS_LIMITS = {
    tier: {
        "CNY": {"single": 10**12, "daily_amount": 10**13, "daily_count": 10**6},
        "USD": {"single": 10**12, "daily_amount": 10**13, "daily_count": 10**6},
    }
    for tier in ("low", "medium", "high")
}


def money(minor: int, currency: str = "CNY") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=minor)


def key() -> str:
    return uuid.uuid4().hex


class Refused(Exception):
    """A call's refusal, as a test reads it."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{error.code().name} {reason_of(error)}: {error.details()}")
        self.code = error.code()
        self.reason = reason_of(error)
        self.fields = field_violations_of(error)
        self.details = error.details() or ""


async def refusal(call: Awaitable[Any]) -> Refused:
    """The refusal of `call`; fails the test if it succeeds."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return Refused(error)
    raise AssertionError(f"expected a refusal, got {reply}")


class Client:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = pb_grpc.PaymentsServiceStub(channel)

    async def open(self, kind: int = pb.ACCOUNT_KIND_CUSTOMER_WALLET, owner: str = "", currency: str = "CNY") -> str:
        platform = kind in (pb.ACCOUNT_KIND_PLATFORM_FEE, pb.ACCOUNT_KIND_RISK_RESERVE)
        reply = await self.stub.OpenAccount(
            pb.OpenAccountRequest(
                idempotency_key=key(),
                owner_id="" if platform else owner or uuid.uuid4().hex,
                kind=kind,
                currency_code=currency,
            )
        )
        return reply.account.account_id

    async def wallet(self, owner: str = "", currency: str = "CNY") -> str:
        return await self.open(pb.ACCOUNT_KIND_CUSTOMER_WALLET, owner, currency)

    async def merchant(self, owner: str = "", currency: str = "CNY") -> str:
        return await self.open(pb.ACCOUNT_KIND_MERCHANT, owner, currency)

    async def top_up(
        self, account: str, minor: int, channel: str = "test_bank", idem: str = "", currency: str = "CNY"
    ) -> pb.TopUpResponse:
        return await self.stub.TopUp(
            pb.TopUpRequest(
                idempotency_key=idem or key(), account_id=account, channel=channel, amount=money(minor, currency)
            )
        )

    async def payout(
        self, account: str, minor: int, channel: str = "test_bank", idem: str = "", token: str = "tok-dest-1"
    ) -> pb.PayoutResponse:
        return await self.stub.Payout(
            pb.PayoutRequest(
                idempotency_key=idem or key(),
                account_id=account,
                channel=channel,
                amount=money(minor),
                destination_token=token,
            )
        )

    async def pay(
        self,
        payer: str,
        payee: str,
        minor: int,
        idem: str = "",
        mode: int = pb.CAPTURE_MODE_AUTOMATIC,
        currency: str = "CNY",
    ) -> pb.Payment:
        reply = await self.stub.CreatePayment(
            pb.CreatePaymentRequest(
                idempotency_key=idem or key(),
                payer_account_id=payer,
                payee_account_id=payee,
                amount=money(minor, currency),
                capture_mode=mode,
            )
        )
        return reply.payment

    async def capture(self, payment_id: str, minor: int | None = None) -> pb.Payment:
        request = pb.CapturePaymentRequest(idempotency_key=key(), payment_id=payment_id)
        if minor is not None:
            request.amount.CopyFrom(money(minor))
        return (await self.stub.CapturePayment(request)).payment

    async def void(self, payment_id: str) -> pb.Payment:
        return (
            await self.stub.VoidPayment(pb.VoidPaymentRequest(idempotency_key=key(), payment_id=payment_id))
        ).payment

    async def refund(self, payment_id: str, minor: int | None = None) -> pb.RefundPaymentResponse:
        request = pb.RefundPaymentRequest(idempotency_key=key(), payment_id=payment_id)
        if minor is not None:
            request.amount.CopyFrom(money(minor))
        return await self.stub.RefundPayment(request)

    async def review(self, payment_id: str, approve: bool) -> pb.Payment:
        decision = pb.REVIEW_DECISION_APPROVE if approve else pb.REVIEW_DECISION_DECLINE
        return (
            await self.stub.ReviewPayment(
                pb.ReviewPaymentRequest(idempotency_key=key(), payment_id=payment_id, decision=decision, note="checked")
            )
        ).payment

    async def freeze(self, account: str, frozen: bool = True) -> None:
        if frozen:
            await self.stub.FreezeAccount(
                pb.FreezeAccountRequest(idempotency_key=key(), account_id=account, reason="OPERATOR")
            )
        else:
            await self.stub.UnfreezeAccount(
                pb.UnfreezeAccountRequest(idempotency_key=key(), account_id=account, reason="OPERATOR")
            )

    async def settle(self, merchant: str) -> pb.SettlementBatch:
        return (
            await self.stub.RunSettlement(pb.RunSettlementRequest(idempotency_key=key(), merchant_account_id=merchant))
        ).batch

    async def balance(self, account: str) -> pb.Balance:
        return (await self.stub.GetAccount(pb.GetAccountRequest(account_id=account))).account.balance

    async def triple(self, account: str) -> tuple[int, int, int]:
        """(available, held, total) of an account."""
        b = await self.balance(account)
        return b.available_minor_units, b.held_minor_units, b.total_minor_units

    async def verify_audit(self) -> pb.VerifyAuditLogResponse:
        return await self.stub.VerifyAuditLog(pb.VerifyAuditLogRequest())


class Database:
    """Direct looks into (and, for tamper tests, changes to) the payments database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)

    async def totals(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            return await totals_by_currency(conn)

    async def negative_customer_balances(self) -> list[str]:
        a = accounts.c
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(a.account_id).where(a.kind != "CLEARING", (a.available < 0) | (a.held < 0) | (a.unsettled < 0))
            )
            return [r.account_id for r in result]

    async def execute(self, statement: str, **params: Any) -> Any:
        async with self.engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return result.all() if result.returns_rows else result.rowcount

    async def scalar(self, statement: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return await conn.scalar(text(statement), params)

    async def close(self) -> None:
        await self.engine.dispose()


class PaymentsUnderTest:
    def __init__(self, mesh: InProcessMesh) -> None:
        self.mesh = mesh
        self.client = Client(mesh.channel("payments"))
        self.db = Database(mesh.services["payments"].database_url)

    @property
    def app(self) -> Any:
        return self.mesh.services["payments"].app

    async def check_books(self) -> None:
        """The invariants every test ends with: currencies sum to zero, no customer balance below zero, chain intact."""
        assert all(total == 0 for total in (await self.db.totals()).values()), await self.db.totals()
        assert await self.db.negative_customer_balances() == []
        verdict = await self.client.verify_audit()
        assert verdict.intact, verdict


@asynccontextmanager
async def payments_mesh(databases: Any, tmp_path: Path, **settings: Any) -> AsyncIterator[PaymentsUnderTest]:
    """Risk and payments in-process on fresh databases of the parametrised kind."""
    extra = {"tier_limits": GENEROUS_LIMITS, "channel_sweep_interval_seconds": 3600.0, **settings}
    async with running_mesh(databases, tmp_path, names=("risk", "payments"), payments_extra=extra) as mesh:
        under_test = PaymentsUnderTest(mesh)
        try:
            yield under_test
        finally:
            await under_test.db.close()
