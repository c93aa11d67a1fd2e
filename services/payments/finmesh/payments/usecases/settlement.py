"""Settlement: a merchant's captured takings up to a cut-off become spendable, less fees and the risk reserve."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from finmesh.payments.domain import settlement as arithmetic
from finmesh.payments.domain.ledger import (
    AccountKind,
    Bucket,
    Posting,
    Transfer,
    TransferKind,
    platform_account_id,
)
from finmesh.payments.store.uow import UnitOfWork
from finmesh.platform.errors import FailedPrecondition


@dataclass(frozen=True)
class Batch:
    batch_id: str
    merchant_account_id: str
    currency: str
    cutoff: datetime
    split: arithmetic.Split
    created_at: datetime


async def run(
    uow: UnitOfWork, batch_id: str, merchant_id: str, cutoff: datetime, schedule: arithmetic.FeeSchedule
) -> Batch:
    merchant = await uow.account(merchant_id)
    if merchant is None:
        raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=merchant_id)
    if merchant.kind is not AccountKind.MERCHANT:
        raise FailedPrecondition("INVALID_STATE", "only merchant accounts are settled", account_id=merchant_id)
    due = await uow.unsettled_payments(merchant_id, cutoff)
    gross = sum(p.captured - p.refunded for p in due)
    split = arithmetic.split(gross, sum(1 for p in due if p.captured > p.refunded), schedule)
    transfer_id = None
    if gross:
        fee_account = platform_account_id(AccountKind.PLATFORM_FEE, merchant.currency)
        reserve_account = platform_account_id(AccountKind.RISK_RESERVE, merchant.currency)
        await uow.ensure_account(fee_account, kind=AccountKind.PLATFORM_FEE, currency=merchant.currency)
        await uow.ensure_account(reserve_account, kind=AccountKind.RISK_RESERVE, currency=merchant.currency)
        credits = [(merchant_id, split.net), (fee_account, split.fees), (reserve_account, split.reserve)]
        postings = (
            Posting(merchant_id, -gross, Bucket.UNSETTLED),
            *(Posting(account, amount) for account, amount in credits if amount),
        )
        # Settling is the platform's own bookkeeping: it runs on frozen merchants
        # too (paying out is what freezing stops).
        transfer_id = await uow.transfer(
            Transfer(TransferKind.SETTLEMENT, merchant.currency, postings, batch_id), allow_frozen=True
        )
    for payment in due:
        uow.put_payment(replace(payment, settlement_batch_id=batch_id))
    uow.add_settlement(
        {
            "batch_id": batch_id,
            "merchant_account_id": merchant_id,
            "currency": merchant.currency,
            "cutoff": cutoff,
            "gross": split.gross,
            "fees": split.fees,
            "risk_reserve": split.reserve,
            "net": split.net,
            "payment_count": len(due),
            "transfer_id": transfer_id,
            "created_at": uow.now,
        }
    )
    uow.emit(
        "payments.settlement.completed.v1",
        merchant_id,
        merchant.owner_id,
        {
            "batch_id": batch_id,
            "merchant_account_id": merchant_id,
            "currency_code": merchant.currency,
            "gross_minor_units": split.gross,
            "fees_minor_units": split.fees,
            "reserve_minor_units": split.reserve,
            "net_minor_units": split.net,
            "payment_count": len(due),
        },
    )
    return Batch(batch_id, merchant_id, merchant.currency, cutoff, replace(split, payment_count=len(due)), uow.now)
