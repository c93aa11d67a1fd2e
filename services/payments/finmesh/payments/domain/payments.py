"""Payment lifecycle: which transitions exist and what money each one moves."""

from __future__ import annotations

from dataclasses import dataclass
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


class CaptureMode(StrEnum):
    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"


class RiskDecision(StrEnum):
    APPROVE = "APPROVE"
    REVIEW = "REVIEW"
    DECLINE = "DECLINE"


@dataclass(frozen=True)
class PaymentRequest:
    payer_account_id: str
    payee_account_id: str
    amount: Money
    capture_mode: CaptureMode
    description: str


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


def check_capturable(status: PaymentStatus, authorized: int, requested: int) -> None:
    if status is not PaymentStatus.AUTHORIZED:
        raise FailedPrecondition("INVALID_STATE", f"a {status.value.lower()} payment cannot be captured")
    if requested > authorized:
        raise InvalidArgument(FieldViolation("amount.minor_units", "exceeds the authorized amount"))


def check_voidable(status: PaymentStatus) -> None:
    if status not in (PaymentStatus.AUTHORIZED, PaymentStatus.IN_REVIEW):
        raise FailedPrecondition("INVALID_STATE", f"a {status.value.lower()} payment cannot be voided")
