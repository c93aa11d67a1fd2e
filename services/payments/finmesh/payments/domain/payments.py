"""Payment lifecycle: which transitions exist, what each one moves, and what each one refuses."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from finmesh.platform.errors import FailedPrecondition, FieldViolation, InvalidArgument, Validator
from finmesh.platform.money import Money, validate_amount


class PaymentStatus(StrEnum):
    AUTHORIZED = "AUTHORIZED"
    IN_REVIEW = "IN_REVIEW"
    CAPTURED = "CAPTURED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    VOIDED = "VOIDED"
    DECLINED = "DECLINED"


# Statuses whose funds are reserved on the payer and not yet moved.
HOLDING = frozenset({PaymentStatus.AUTHORIZED, PaymentStatus.IN_REVIEW})
# Statuses with captured money that refunds and settlement can work on.
CAPTURED_STATES = frozenset({PaymentStatus.CAPTURED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED})


class CaptureMode(StrEnum):
    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"


class RiskDecision(StrEnum):
    APPROVE = "APPROVE"
    REVIEW = "REVIEW"
    DECLINE = "DECLINE"


class ReviewDecision(StrEnum):
    APPROVE = "APPROVE"
    DECLINE = "DECLINE"


@dataclass(frozen=True)
class PaymentRequest:
    payer_account_id: str
    payee_account_id: str
    amount: Money
    capture_mode: CaptureMode
    description: str


@dataclass(frozen=True)
class PaymentState:
    payment_id: str
    payer_account_id: str
    payee_account_id: str
    currency: str
    amount: int
    captured: int
    refunded: int
    status: PaymentStatus
    capture_mode: CaptureMode
    description: str
    risk_assessment_id: str
    risk_score: int
    risk_decision: str
    risk_reasons: str
    created_at: datetime
    updated_at: datetime
    captured_at: datetime | None = None
    settlement_batch_id: str | None = None
    review_note: str = ""

    @property
    def refundable(self) -> int:
        return self.captured - self.refunded if self.status in CAPTURED_STATES else 0


MAX_DESCRIPTION = 200


def validate_payment_request(
    payer: str, payee: str, currency: str, minor_units: int, description: str, has_amount: bool
) -> None:
    """Raise InvalidArgument naming every bad field of a payment request."""
    v = Validator()
    v.require(bool(payer), "payer_account_id", "required")
    v.require(bool(payee), "payee_account_id", "required")
    if not has_amount:
        v.violations.append(FieldViolation("amount", "required"))
    else:
        v.violations.extend(validate_amount(currency, minor_units))
    v.require(len(description) <= MAX_DESCRIPTION, "description", f"at most {MAX_DESCRIPTION} characters")
    v.raise_if_any()
    if payer == payee:
        raise InvalidArgument(FieldViolation("payee_account_id", "must differ from payer_account_id"))


@dataclass(frozen=True)
class Outcome:
    """What creating a payment does, given risk's decision and the capture mode."""

    status: PaymentStatus
    hold: bool  # funds reserved on the payer, not yet moved
    capture: bool  # funds moved to the payee now


def decide(decision: RiskDecision, mode: CaptureMode) -> Outcome:
    if decision is RiskDecision.DECLINE:
        raise FailedPrecondition("RISK_DECLINED", "the payment was declined by risk control")
    if decision is RiskDecision.REVIEW:
        return Outcome(PaymentStatus.IN_REVIEW, hold=True, capture=False)
    if mode is CaptureMode.MANUAL:
        return Outcome(PaymentStatus.AUTHORIZED, hold=True, capture=False)
    return Outcome(PaymentStatus.CAPTURED, hold=False, capture=True)


def _invalid_state(payment: PaymentState, action: str) -> FailedPrecondition:
    return FailedPrecondition(
        "INVALID_STATE",
        f"a {payment.status.value.lower()} payment cannot be {action}",
        payment_id=payment.payment_id,
        status=payment.status.value,
    )


def capture(payment: PaymentState, requested: int | None, now: datetime) -> tuple[PaymentState, int]:
    """The captured payment and the part of the hold to release (a partial capture gives the rest back)."""
    if payment.status is not PaymentStatus.AUTHORIZED:
        raise _invalid_state(payment, "captured")
    amount = payment.amount if requested is None else requested
    if amount > payment.amount:
        raise InvalidArgument(FieldViolation("amount.minor_units", "exceeds the authorized amount"))
    captured = replace(payment, status=PaymentStatus.CAPTURED, captured=amount, captured_at=now, updated_at=now)
    return captured, payment.amount - amount


def void(payment: PaymentState, now: datetime) -> PaymentState:
    if payment.status not in HOLDING:
        raise _invalid_state(payment, "voided")
    return replace(payment, status=PaymentStatus.VOIDED, updated_at=now)


def review(payment: PaymentState, decision: ReviewDecision, note: str, now: datetime) -> PaymentState:
    """An officer's verdict on a held payment: approval captures (or authorizes, for manual capture)."""
    if payment.status is not PaymentStatus.IN_REVIEW:
        raise _invalid_state(payment, "reviewed")
    if decision is ReviewDecision.DECLINE:
        return replace(payment, status=PaymentStatus.DECLINED, review_note=note, updated_at=now)
    if payment.capture_mode is CaptureMode.MANUAL:
        return replace(payment, status=PaymentStatus.AUTHORIZED, review_note=note, updated_at=now)
    return replace(
        payment,
        status=PaymentStatus.CAPTURED,
        captured=payment.amount,
        captured_at=now,
        review_note=note,
        updated_at=now,
    )


def refund(payment: PaymentState, currency: str, requested: int | None, now: datetime) -> tuple[PaymentState, int]:
    """The payment after refunding `requested` (default: everything still refundable) and the amount."""
    if payment.status not in CAPTURED_STATES:
        raise _invalid_state(payment, "refunded")
    if currency != payment.currency:
        raise FailedPrecondition(
            "CURRENCY_MISMATCH", f"the payment is in {payment.currency}, not {currency}", payment_id=payment.payment_id
        )
    amount = payment.refundable if requested is None else requested
    if amount <= 0 or amount > payment.refundable:
        raise FailedPrecondition(
            "REFUND_EXCEEDS_CAPTURED",
            "refunds may not exceed what was captured",
            payment_id=payment.payment_id,
            refundable_minor_units=str(payment.refundable),
        )
    refunded = payment.refunded + amount
    status = PaymentStatus.REFUNDED if refunded == payment.captured else PaymentStatus.PARTIALLY_REFUNDED
    return replace(payment, refunded=refunded, status=status, updated_at=now), amount
