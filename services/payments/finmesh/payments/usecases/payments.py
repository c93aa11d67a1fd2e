"""Payments: create (after risk), capture, void, review, refund."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from finmesh.payments.clients.risk import RiskVerdict
from finmesh.payments.domain import payments as rules
from finmesh.payments.domain.ledger import (
    CUSTOMER_KINDS,
    AccountKind,
    AccountState,
    Bucket,
    TransferKind,
    move,
    takings_bucket,
)
from finmesh.payments.domain.limits import LimitPolicy, limit_day
from finmesh.payments.domain.payments import PaymentRequest, PaymentState, PaymentStatus
from finmesh.payments.domain.synthetic import between_test_accounts
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import metrics
from finmesh.platform.errors import DomainError, FailedPrecondition, NotFound


@dataclass(frozen=True)
class LimitRules:
    policy: LimitPolicy
    utc_offset_minutes: int


@dataclass(frozen=True)
class RefundResult:
    refund_id: str
    payment: PaymentState
    amount: int
    reason: str


async def parties(uow: UnitOfWork, payer_id: str, payee_id: str, currency: str) -> tuple[AccountState, AccountState]:
    """Payer and payee, refusing unknown accounts, platform accounts and other currencies."""
    await uow.load_accounts([payer_id, payee_id])
    found = []
    for account_id in (payer_id, payee_id):
        account = await uow.account(account_id)
        if account is None:
            raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=account_id)
        if account.kind not in CUSTOMER_KINDS:
            raise FailedPrecondition(
                "INVALID_STATE", "payments move between wallets and merchant accounts only", account_id=account_id
            )
        if account.currency != currency:
            raise FailedPrecondition(
                "CURRENCY_MISMATCH", f"account is in {account.currency}, not {currency}", account_id=account_id
            )
        found.append(account)
    return found[0], found[1]


async def check_limits(uow: UnitOfWork, limits: LimitRules, payer: AccountState, amount: int) -> None:
    """Count the payment against the payer's tier limits (customer wallets only; merchants have contracts)."""
    if payer.kind is not AccountKind.CUSTOMER_WALLET:
        return
    tier = await uow.tier(payer.owner_id)
    day = limit_day(uow.now, limits.utc_offset_minutes)
    usage = await uow.usage(payer.owner_id, payer.currency, day)
    uow.put_usage(payer.owner_id, payer.currency, day, limits.policy.check(tier, payer.currency, amount, usage))


async def create_payment(
    uow: UnitOfWork, payment_id: str, request: PaymentRequest, verdict: RiskVerdict, limits: LimitRules
) -> PaymentState:
    """Record the payment and move or hold its money as risk's verdict and the capture mode say."""
    try:
        payment = await _create_payment(uow, payment_id, request, verdict, limits)
    except DomainError as refusal:
        metrics.count_payment_refusal(uow, refusal, verdict.decision)
        raise
    metrics.count_payment(uow, payment.status, verdict.decision)
    return payment


async def _create_payment(
    uow: UnitOfWork, payment_id: str, request: PaymentRequest, verdict: RiskVerdict, limits: LimitRules
) -> PaymentState:
    amount = request.amount
    payer, payee = await parties(uow, request.payer_account_id, request.payee_account_id, amount.currency)
    outcome = rules.decide(verdict.decision, request.capture_mode)
    await check_limits(uow, limits, payer, amount.minor_units)
    if outcome.capture:
        await uow.transfer(
            move(
                TransferKind.PAYMENT,
                payer.account_id,
                payee.account_id,
                amount.currency,
                amount.minor_units,
                reference=payment_id,
                destination_bucket=takings_bucket(payee.kind),
            )
        )
    else:
        await uow.hold(payer.account_id, amount.minor_units, reference=payment_id)
    payment = PaymentState(
        payment_id=payment_id,
        payer_account_id=payer.account_id,
        payee_account_id=payee.account_id,
        currency=amount.currency,
        amount=amount.minor_units,
        captured=amount.minor_units if outcome.capture else 0,
        refunded=0,
        status=outcome.status,
        capture_mode=request.capture_mode,
        description=request.description,
        risk_assessment_id=verdict.assessment_id,
        risk_score=verdict.score,
        risk_decision=verdict.decision.value,
        risk_reasons=",".join(verdict.reasons)[:500],
        created_at=uow.now,
        updated_at=uow.now,
        captured_at=uow.now if outcome.capture else None,
    )
    uow.put_payment(payment)
    await _announce(uow, payment)
    return payment


async def _require(uow: UnitOfWork, payment_id: str) -> PaymentState:
    payment = await uow.payment(payment_id)
    if payment is None:
        raise NotFound("PAYMENT_NOT_FOUND", "payment not found", payment_id=payment_id)
    return payment


async def _capture_hold(uow: UnitOfWork, payment: PaymentState, amount: int) -> None:
    """Move `amount` of the payer's hold to the payee."""
    payee = await uow.account(payment.payee_account_id)
    assert payee is not None  # payments reference accounts that exist; accounts are never deleted
    await uow.transfer(
        move(
            TransferKind.CAPTURE,
            payment.payer_account_id,
            payment.payee_account_id,
            payment.currency,
            amount,
            reference=payment.payment_id,
            source_bucket=Bucket.HELD,
            destination_bucket=takings_bucket(payee.kind),
        )
    )


async def capture_payment(uow: UnitOfWork, payment_id: str, minor_units: int | None) -> PaymentState:
    """Move held funds to the payee; any part not captured goes back to the payer."""
    payment = await _require(uow, payment_id)
    captured, remainder = rules.capture(payment, minor_units, uow.now)
    if captured.captured:
        await _capture_hold(uow, payment, captured.captured)
    await uow.release(payment.payer_account_id, remainder, reference=payment_id)
    uow.put_payment(captured)
    await _announce(uow, captured)
    return captured


async def void_payment(uow: UnitOfWork, payment_id: str) -> PaymentState:
    payment = await _require(uow, payment_id)
    voided = rules.void(payment, uow.now)
    await uow.release(payment.payer_account_id, payment.amount, reference=payment_id)
    uow.put_payment(voided)
    await _announce(uow, voided)
    return voided


async def expire_authorization(uow: UnitOfWork, payment_id: str) -> PaymentState:
    """Void an authorization nobody captured in time; one captured or voided meanwhile is left alone."""
    payment = await _require(uow, payment_id)
    if payment.status is not PaymentStatus.AUTHORIZED:
        return payment
    return await void_payment(uow, payment_id)


async def review_payment(uow: UnitOfWork, payment_id: str, decision: rules.ReviewDecision, note: str) -> PaymentState:
    payment = await _require(uow, payment_id)
    reviewed = rules.review(payment, decision, note, uow.now)
    if reviewed.status is PaymentStatus.DECLINED:
        await uow.release(payment.payer_account_id, payment.amount, reference=payment_id)
    elif reviewed.status is PaymentStatus.CAPTURED:
        await _capture_hold(uow, payment, payment.amount)
    uow.put_payment(reviewed)
    await _announce(uow, reviewed)
    return reviewed


async def refund_payment(
    uow: UnitOfWork, payment_id: str, currency: str | None, minor_units: int | None, reason: str
) -> RefundResult:
    """Give captured money back to the payer: from the payee's takings if not settled yet, else its balance."""
    payment = await _require(uow, payment_id)
    refunded, amount = rules.refund(payment, currency or payment.currency, minor_units, uow.now)
    payee = await uow.account(payment.payee_account_id)
    assert payee is not None
    source = takings_bucket(payee.kind) if payment.settlement_batch_id is None else Bucket.AVAILABLE
    refund_id = str(uuid.uuid4())
    transfer_id = await uow.transfer(
        move(
            TransferKind.REFUND,
            payment.payee_account_id,
            payment.payer_account_id,
            payment.currency,
            amount,
            reference=payment_id,
            source_bucket=source,
        )
    )
    uow.put_payment(refunded)
    uow.add_refund(
        {
            "refund_id": refund_id,
            "payment_id": payment_id,
            "currency": payment.currency,
            "amount": amount,
            "reason": reason,
            "transfer_id": transfer_id,
            "created_at": uow.now,
        }
    )
    await _announce(uow, refunded, refund_minor_units=amount)
    return RefundResult(refund_id, refunded, amount, reason)


async def _announce(uow: UnitOfWork, payment: PaymentState, **extra: Any) -> None:
    payer = await uow.account(payment.payer_account_id)
    payee = await uow.account(payment.payee_account_id)
    assert payer is not None and payee is not None
    if between_test_accounts((payer.owner_id, payee.owner_id), uow.test_owners):
        # Consumers (notify) keep test traffic away from people and out of their figures.
        extra["synthetic"] = True
    uow.emit(
        f"payments.payment.{payment.status.value.lower()}.v1",
        payment.payer_account_id,
        payer.owner_id,
        {
            "payment_id": payment.payment_id,
            "status": payment.status.value,
            "payer_account_id": payment.payer_account_id,
            "payee_account_id": payment.payee_account_id,
            "payer_user_id": payer.owner_id,
            "payee_user_id": payee.owner_id,
            "amount_minor_units": payment.amount,
            "captured_minor_units": payment.captured,
            "refunded_minor_units": payment.refunded,
            "currency_code": payment.currency,
            **extra,
        },
    )
