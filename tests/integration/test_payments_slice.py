"""Payments through real gRPC servers (payments, risk, notify in-process) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from finmesh.common.v1 import money_pb2
from finmesh.notify.v1 import notify_service_pb2 as no_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as no_grpc
from finmesh.payments.store.ledger import totals_by_currency
from finmesh.payments.store.schema import entries, outbox, transfers
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.rpc.guard import field_violations_of, reason_of
from finmesh.platform.storage.db import create_engine
from tests.inprocess import running_mesh


def cny(minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="CNY", minor_units=minor)


def key() -> str:
    return uuid.uuid4().hex


class Client:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = pb_grpc.PaymentsServiceStub(channel)

    async def wallet(self, owner: str = "", currency: str = "CNY") -> str:
        reply = await self.stub.OpenAccount(
            pb.OpenAccountRequest(
                idempotency_key=key(),
                owner_id=owner or uuid.uuid4().hex,
                kind=pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                currency_code=currency,
            )
        )
        return reply.account.account_id

    async def top_up(self, account: str, minor: int) -> None:
        await self.stub.TopUp(
            pb.TopUpRequest(idempotency_key=key(), account_id=account, channel="test_bank", amount=cny(minor))
        )

    async def balance(self, account: str) -> pb.Balance:
        return (await self.stub.GetAccount(pb.GetAccountRequest(account_id=account))).account.balance

    async def pay(
        self, payer: str, payee: str, minor: int, idem: str | None = None, mode: int = pb.CAPTURE_MODE_AUTOMATIC
    ) -> pb.Payment:
        reply = await self.stub.CreatePayment(
            pb.CreatePaymentRequest(
                idempotency_key=key() if idem is None else idem,
                payer_account_id=payer,
                payee_account_id=payee,
                amount=cny(minor),
                capture_mode=mode,
            )
        )
        return reply.payment


async def ledger_totals(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await totals_by_currency(conn)
    finally:
        await engine.dispose()


async def row_counts(url: str) -> tuple[int, int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return tuple(
                [
                    int(await conn.scalar(select(func.count()).select_from(t)))  # type: ignore[misc]
                    for t in (transfers, entries, outbox)
                ]
            )
    finally:
        await engine.dispose()


async def test_payment_moves_exact_amounts_and_books_balance(databases, tmp_path: Path) -> None:
    """A captured payment debits the payer and credits the payee exactly; every currency sums to zero."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 100_000)
        payment = await c.pay(alice, bob, 12_345)
        assert payment.status == pb.PAYMENT_STATUS_CAPTURED
        assert payment.risk.decision == "APPROVE"
        assert (await c.balance(alice)).available_minor_units == 87_655
        assert (await c.balance(bob)).available_minor_units == 12_345
        assert await ledger_totals(mesh.services["payments"].database_url) == {"CNY": 0}


async def test_notify_records_receipt_from_outbox(databases, tmp_path: Path) -> None:
    """The payment's outbox event reaches notify, which records receipts for payer and payee."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice_user, bob_user = uuid.uuid4().hex, uuid.uuid4().hex
        alice, bob = await c.wallet(alice_user), await c.wallet(bob_user)
        await c.top_up(alice, 5_000)
        await c.pay(alice, bob, 1_000)
        notify = no_grpc.NotifyServiceStub(mesh.channel("notify"))
        for _ in range(100):
            got = await notify.ListNotifications(no_pb.ListNotificationsRequest(user_id=bob_user))
            if got.notifications:
                break
            await asyncio.sleep(0.05)
        assert [n.template for n in got.notifications] == ["payment_received"]
        sent = await notify.ListNotifications(no_pb.ListNotificationsRequest(user_id=alice_user))
        assert sorted(n.template for n in sent.notifications) == ["payment_sent", "topup_succeeded"]


async def test_retry_with_same_key_returns_first_answer_bytes(databases, tmp_path: Path) -> None:
    """Same key + same request replays the stored reply byte for byte and moves money once."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 10_000)
        idem = key()
        first = await c.pay(alice, bob, 2_500, idem=idem)
        second = await c.pay(alice, bob, 2_500, idem=idem)
        assert first.SerializeToString() == second.SerializeToString()
        assert (await c.balance(alice)).available_minor_units == 7_500


async def test_same_key_different_request_is_refused(databases, tmp_path: Path) -> None:
    """Reusing a key for another request is FAILED_PRECONDITION IDEMPOTENCY_KEY_REUSED, and moves nothing."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 10_000)
        idem = key()
        await c.pay(alice, bob, 1_000, idem=idem)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.pay(alice, bob, 2_000, idem=idem)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(refused.value) == "IDEMPOTENCY_KEY_REUSED"
        assert (await c.balance(alice)).available_minor_units == 9_000


async def test_insufficient_funds_refused_without_partial_write(databases, tmp_path: Path) -> None:
    """Overdrawing is refused with INSUFFICIENT_FUNDS; no transfer, entry or event is written; a retry stays refused."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 1_000)
        url = mesh.services["payments"].database_url
        before = await row_counts(url)
        idem = key()
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await c.pay(alice, bob, 1_001, idem=idem)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason_of(refused.value) == "INSUFFICIENT_FUNDS"
        await c.top_up(alice, 5_000)
        with pytest.raises(grpc.aio.AioRpcError) as replayed:
            await c.pay(alice, bob, 1_001, idem=idem)  # a recorded refusal never turns into a success
        assert reason_of(replayed.value) == "INSUFFICIENT_FUNDS"
        after = await row_counts(url)
        assert after[0] - before[0] == 1  # only the second top-up's transfer
        assert (await c.balance(bob)).total_minor_units == 0


@pytest.mark.parametrize(
    ("amount", "fields"),
    [
        (money_pb2.Money(currency_code="CNY", minor_units=0), ["amount.minor_units"]),
        (money_pb2.Money(currency_code="CNY", minor_units=-5), ["amount.minor_units"]),
        (money_pb2.Money(currency_code="XXX", minor_units=5), ["amount.currency_code"]),
        (money_pb2.Money(currency_code="CNY", minor_units=2**63 - 1), ["amount.minor_units"]),
    ],
)
async def test_bad_amounts_are_invalid_argument_with_field(databases, tmp_path: Path, amount, fields) -> None:
    """Zero, negative, overflowing amounts and unknown currencies name the bad field."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice, bob = await c.wallet(), await c.wallet()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.stub.CreatePayment(
                pb.CreatePaymentRequest(
                    idempotency_key=key(), payer_account_id=alice, payee_account_id=bob, amount=amount
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations_of(refused.value) == fields


async def test_self_payment_unknown_account_and_missing_key(databases, tmp_path: Path) -> None:
    """Self-payment and a missing key are INVALID_ARGUMENT; an unknown payee is FAILED_PRECONDITION."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice = await c.wallet()
        await c.top_up(alice, 1_000)
        with pytest.raises(grpc.aio.AioRpcError) as self_pay:
            await c.pay(alice, alice, 10)
        assert field_violations_of(self_pay.value) == ["payee_account_id"]
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await c.pay(alice, "no-such-account", 10)
        assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(unknown.value) == "ACCOUNT_NOT_FOUND"
        with pytest.raises(grpc.aio.AioRpcError) as no_key:
            await c.pay(alice, "x", 10, idem="")
        assert no_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations_of(no_key.value) == ["idempotency_key"]


async def test_concurrent_payments_never_overdraw(databases, tmp_path: Path) -> None:
    """16 concurrent payments against a wallet that covers 10: exactly 10 succeed, the balance is exact.

    16 stays under risk's velocity limit (20 per window), so every refusal here is the ledger's.
    """
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 10_000)
        results = await asyncio.gather(*(c.pay(alice, bob, 1_000) for _ in range(16)), return_exceptions=True)
        ok = [r for r in results if isinstance(r, pb.Payment)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(ok) == 10 and len(refused) == 6
        assert {reason_of(r) for r in refused} == {"INSUFFICIENT_FUNDS"}
        assert (await c.balance(alice)).available_minor_units == 0
        assert (await c.balance(bob)).available_minor_units == 10_000
        assert await ledger_totals(mesh.services["payments"].database_url) == {"CNY": 0}


async def test_manual_capture_holds_then_captures_part(databases, tmp_path: Path) -> None:
    """A manual payment holds funds; a partial capture pays the payee and releases the rest."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 10_000)
        held = await c.pay(alice, bob, 4_000, mode=pb.CAPTURE_MODE_MANUAL)
        assert held.status == pb.PAYMENT_STATUS_AUTHORIZED
        bal = await c.balance(alice)
        assert (bal.available_minor_units, bal.held_minor_units, bal.total_minor_units) == (6_000, 4_000, 10_000)
        captured = await c.stub.CapturePayment(
            pb.CapturePaymentRequest(idempotency_key=key(), payment_id=held.payment_id, amount=cny(2_500))
        )
        assert captured.payment.status == pb.PAYMENT_STATUS_CAPTURED
        bal = await c.balance(alice)
        assert (bal.available_minor_units, bal.held_minor_units) == (7_500, 0)
        assert (await c.balance(bob)).available_minor_units == 2_500
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await c.stub.VoidPayment(pb.VoidPaymentRequest(idempotency_key=key(), payment_id=held.payment_id))
        assert reason_of(again.value) == "INVALID_STATE"
        assert await ledger_totals(mesh.services["payments"].database_url) == {"CNY": 0}


async def test_frozen_account_cannot_pay(databases, tmp_path: Path) -> None:
    """A frozen payer is refused with ACCOUNT_FROZEN; after unfreezing it pays again."""
    async with running_mesh(databases, tmp_path) as mesh:
        c = Client(mesh.channel("payments"))
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 1_000)
        await c.stub.FreezeAccount(pb.FreezeAccountRequest(idempotency_key=key(), account_id=alice, reason="OPERATOR"))
        with pytest.raises(grpc.aio.AioRpcError) as frozen:
            await c.pay(alice, bob, 100)
        assert reason_of(frozen.value) == "ACCOUNT_FROZEN"
        await c.stub.UnfreezeAccount(pb.UnfreezeAccountRequest(idempotency_key=key(), account_id=alice))
        assert (await c.pay(alice, bob, 100)).status == pb.PAYMENT_STATUS_CAPTURED
