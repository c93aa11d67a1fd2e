"""Payments use cases: each runs inside the caller's transaction and leaves it balanced."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.payments.clients import RiskVerdict
from finmesh.payments.domain import payments as rules
from finmesh.payments.domain.ledger import AccountKind, TransferKind, clearing_account_id, move
from finmesh.payments.store import ledger
from finmesh.payments.store import payments as payment_rows
from finmesh.payments.store.schema import accounts, outbox
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.money import Money
from finmesh.platform.outbox import enqueue


async def top_up(conn: AsyncConnection, account_id: str, amount: Money, channel: str) -> tuple[Any, Any]:
    """Credit a wallet with money that arrived through `channel` (its clearing account is debited)."""
    clearing = clearing_account_id(channel, amount.currency)
    await ledger.ensure_account(conn, clearing, owner_id="", kind=AccountKind.CLEARING,
                                currency=amount.currency, channel=channel)
    target = await ledger.get_account(conn, account_id)
    if target is None:
        raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=account_id)
    transfer_id = await ledger.apply_transfer(conn, move(TransferKind.TOP_UP, clearing, account_id, amount))
    operation = await payment_rows.insert_channel_operation(
        conn,
        operation_id=str(uuid.uuid4()),
        kind="TOP_UP",
        account_id=account_id,
        channel=channel,
        currency=amount.currency,
        amount=amount.minor_units,
        status="SUCCEEDED",
        channel_reference=f"{channel}-{transfer_id}",
        transfer_id=transfer_id,
    )
    await enqueue(conn, outbox, event_type="payments.topup.succeeded.v1", aggregate_id=account_id,
                  user_id=target.owner_id,
                  payload={"account_id": account_id, "amount_minor_units": amount.minor_units,
                           "currency_code": amount.currency, "channel": channel})
    return operation, await ledger.get_account(conn, account_id)


async def create_payment(
    conn: AsyncConnection, payment_id: str, request: rules.PaymentRequest, verdict: RiskVerdict,
) -> Any:
    """Record the payment and move or hold its money as risk's verdict and the capture mode say."""
    outcome = rules.decide(verdict.decision, request.capture_mode)
    amount = request.amount
    payer = await ledger.get_account(conn, request.payer_account_id)
    payee = await ledger.get_account(conn, request.payee_account_id)
    for row, field in ((payer, request.payer_account_id), (payee, request.payee_account_id)):
        if row is None:
            raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=field)
    if outcome.capture:
        await ledger.apply_transfer(conn, move(TransferKind.PAYMENT, payer.account_id, payee.account_id, amount),
                                    reference=payment_id)
    else:
        await ledger.hold(conn, payer.account_id, amount.minor_units, amount.currency)
    row = await payment_rows.insert_payment(
        conn,
        payment_id=payment_id,
        payer_account_id=payer.account_id,
        payee_account_id=payee.account_id,
        currency=amount.currency,
        amount=amount.minor_units,
        captured=amount.minor_units if outcome.capture else 0,
        refunded=0,
        status=outcome.status.value,
        capture_mode=request.capture_mode.value,
        description=request.description,
        risk_assessment_id=verdict.assessment_id,
        risk_score=verdict.score,
        risk_decision=verdict.decision.value,
        risk_reasons=",".join(verdict.reasons)[:500],
    )
    await enqueue(conn, outbox, event_type=f"payments.payment.{outcome.status.value.lower()}.v1",
                  aggregate_id=payer.account_id, user_id=payer.owner_id,
                  payload=_payment_event(row, payer.owner_id, payee.owner_id))
    return row


async def capture_payment(conn: AsyncConnection, payment_id: str, minor_units: int | None) -> Any:
    """Move held funds to the payee; any part not captured goes back to the payer."""
    row = await payment_rows.require_payment(conn, payment_id)
    amount = row.amount if minor_units is None else minor_units
    rules.check_capturable(rules.PaymentStatus(row.status), row.amount, amount)
    # The guarded status change comes first: a concurrent capture or void loses here, cleanly.
    updated = await payment_rows.update_payment(conn, payment_id, row.status,
                                                status=rules.PaymentStatus.CAPTURED.value, captured=amount)
    transfer = move(TransferKind.CAPTURE, row.payer_account_id, row.payee_account_id, Money(row.currency, amount))
    await ledger.apply_transfer(conn, transfer, reference=payment_id,
                                debit_from_held=frozenset({row.payer_account_id}))
    if row.amount > amount:
        await ledger.release(conn, row.payer_account_id, row.amount - amount)
    await _payment_changed(conn, updated)
    return updated


async def void_payment(conn: AsyncConnection, payment_id: str) -> Any:
    row = await payment_rows.require_payment(conn, payment_id)
    rules.check_voidable(rules.PaymentStatus(row.status))
    updated = await payment_rows.update_payment(conn, payment_id, row.status,
                                                status=rules.PaymentStatus.VOIDED.value)
    await ledger.release(conn, row.payer_account_id, row.amount)
    await _payment_changed(conn, updated)
    return updated


async def set_frozen(conn: AsyncConnection, account_id: str, frozen: bool, reason: str) -> Any:
    row = await ledger.require_account(conn, account_id)
    status = "FROZEN" if frozen else "ACTIVE"
    if row.status != status:
        await conn.execute(update(accounts).where(accounts.c.account_id == account_id).values(status=status))
        await enqueue(conn, outbox, event_type=f"payments.account.{status.lower()}.v1", aggregate_id=account_id,
                      user_id=row.owner_id, payload={"account_id": account_id, "reason": reason})
    return await ledger.get_account(conn, account_id)


async def _payment_changed(conn: AsyncConnection, row: Any) -> None:
    payer = await ledger.get_account(conn, row.payer_account_id)
    payee = await ledger.get_account(conn, row.payee_account_id)
    await enqueue(conn, outbox, event_type=f"payments.payment.{row.status.lower()}.v1",
                  aggregate_id=row.payer_account_id, user_id=payer.owner_id,
                  payload=_payment_event(row, payer.owner_id, payee.owner_id))


def _payment_event(row: Any, payer_user_id: str, payee_user_id: str) -> dict[str, Any]:
    return {
        "payment_id": row.payment_id,
        "status": row.status,
        "payer_account_id": row.payer_account_id,
        "payee_account_id": row.payee_account_id,
        "payer_user_id": payer_user_id,
        "payee_user_id": payee_user_id,
        "amount_minor_units": row.amount,
        "captured_minor_units": row.captured,
        "currency_code": row.currency,
    }
