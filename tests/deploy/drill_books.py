"""What both local drills (blue-green, canary) do to money: open and fund the wallets the load pays between,
and afterwards check that the books say exactly what the client was told."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from sqlalchemy import text

from finmesh.common.v1 import money_pb2
from finmesh.drill.load import LoadReport
from finmesh.payments.store.ledger import totals_by_currency
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.storage.db import create_engine
from tests.auth import Book, Issuer
from tests.auth import channel as acting_channel

# Reads in flight at once: ~1,300 GetPayment calls at once came back CANCELLED on a busy 2-core machine.
READS_AT_ONCE = 100


async def open_accounts(
    target: str, run_id: str, issuer: Issuer, book: Book, *, payers: int, payees: int, top_up: int
) -> tuple[list[str], list[str]]:
    """`payers` wallets topped up with `top_up` each, and `payees` wallets, opened by their owners."""
    async with acting_channel(target, issuer, book) as channel:
        stub = pb_grpc.PaymentsServiceStub(channel)

        async def wallet(i: int) -> str:
            reply = await stub.OpenAccount(
                pb.OpenAccountRequest(
                    idempotency_key=f"{run_id}-open-{i}",
                    owner_id=f"drill-{run_id}-user-{i}",
                    kind=pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                    currency_code="CNY",
                ),
                timeout=10,
            )
            return reply.account.account_id

        accounts = await asyncio.gather(*(wallet(i) for i in range(payers + payees)))
        paying, paid = list(accounts[:payers]), list(accounts[payers:])
        await asyncio.gather(
            *(
                stub.TopUp(
                    pb.TopUpRequest(
                        idempotency_key=f"{run_id}-topup-{i}",
                        account_id=account,
                        channel="test_bank",
                        amount=money_pb2.Money(currency_code="CNY", minor_units=top_up),
                    ),
                    timeout=10,
                )
                for i, account in enumerate(paying)
            )
        )
    return paying, paid


async def check_books(
    target: str, report: LoadReport, payers: list[str], payees: list[str], issuer: Issuer, book: Book, top_up: int
) -> None:
    """Every acknowledged payment reads back as answered; every balance is exactly what those payments imply
    (a doubled or lost payment would show); the hash-chained audit log is intact."""
    async with acting_channel(target, issuer, book) as channel:
        stub = pb_grpc.PaymentsServiceStub(channel)
        gate = asyncio.Semaphore(READS_AT_ONCE)

        async def read(payment_id: str) -> Any:
            async with gate:
                return (await stub.GetPayment(pb.GetPaymentRequest(payment_id=payment_id), timeout=10)).payment

        stored = await asyncio.gather(*(read(r.payment_id) for r in report.acknowledged))
        expected: dict[str, Counter[str]] = {a: Counter() for a in payers + payees}
        for record, p in zip(report.acknowledged, stored, strict=True):
            assert (p.payer_account_id, p.payee_account_id, p.amount.minor_units, p.status) == (
                record.payer,
                record.payee,
                record.amount,
                record.status,
            ), record
            assert p.status in (pb.PAYMENT_STATUS_CAPTURED, pb.PAYMENT_STATUS_IN_REVIEW), p
            expected[record.payer]["available"] -= record.amount
            if p.status == pb.PAYMENT_STATUS_CAPTURED:
                expected[record.payee]["available"] += record.amount
            else:  # in review: the payer's funds are held, the payee has nothing yet
                expected[record.payer]["held"] += record.amount
        for account in payers + payees:
            balance = (await stub.GetAccount(pb.GetAccountRequest(account_id=account), timeout=10)).account.balance
            want = ((top_up if account in payers else 0) + expected[account]["available"], expected[account]["held"])
            assert (balance.available_minor_units, balance.held_minor_units) == want, account
        audit = await stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), timeout=30)
        assert audit.intact, f"audit chain broken at {audit.first_broken_sequence} (two writers on one chain?)"


async def payment_rows(database_url: str, run_id: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Read-only: (payment_id, description) of this run's payments, and payments' own per-currency totals."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT payment_id, description FROM payments WHERE description LIKE :p"),
                {"p": f"drill {run_id} #%"},
            )
            found = [(r.payment_id, r.description) for r in rows]
            totals = await totals_by_currency(conn)
    finally:
        await engine.dispose()
    return found, totals
