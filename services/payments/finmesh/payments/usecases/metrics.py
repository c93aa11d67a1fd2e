"""Payments' business metrics: payments by outcome, channel operations by state, the ledger writer's batches, and
the periodic check that the ledger balances.

Labels have a handful of values each (statuses, risk decisions, operation kinds): never an account, payment or
user id. Outcomes are counted once their batch has committed (UnitOfWork.after_commit), so a batch committed
again without a failing command (group commit's split) counts each payment once.
"""

from __future__ import annotations

import time
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.payments.domain.payments import PaymentStatus, RiskDecision
from finmesh.payments.store.ledger import totals_by_currency
from finmesh.payments.store.uow import UnitOfWork
from finmesh.platform.errors import DomainError, InvalidArgument
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, meter

_log = get_logger("finmesh.payments.metrics")
_meter = meter("finmesh.payments")

# A payment refused in the writer after risk's verdict (limits, funds, a frozen account): no payment was made.
REFUSED = "REFUSED"
# What CreatePayment can end in, by risk's decision.
PAYMENT_OUTCOMES = {
    RiskDecision.APPROVE: (PaymentStatus.CAPTURED, PaymentStatus.AUTHORIZED, REFUSED),
    RiskDecision.REVIEW: (PaymentStatus.IN_REVIEW, REFUSED),
    RiskDecision.DECLINE: (PaymentStatus.DECLINED,),
}
CHANNEL_OPERATIONS = {"TOP_UP": "top_up", "PAYOUT": "payout"}
CHANNEL_STATES = ("PENDING", "SUCCEEDED", "FAILED", "PARKED")

_payments = _meter.create_counter(
    "finmesh.payments",
    unit="{payment}",
    description="Payments created, by the status they ended in and risk's decision",
)
_channel_operations = _meter.create_counter(
    "finmesh.payments.channel_operations",
    unit="{operation}",
    description="Top-ups and payouts entering each state (PENDING when the bank is asked, then its outcome)",
)
ledger_batch_size = _meter.create_histogram(
    "finmesh.ledger.batch_size",
    unit="{command}",
    description="Commands one ledger transaction carried (group commit)",
    explicit_bucket_boundaries_advisory=list(BATCH_BUCKETS),
)
ledger_commit_duration = _meter.create_histogram(
    "finmesh.ledger.commit_duration",
    unit="s",
    description="One ledger batch's transaction, from its first statement to its commit",
    explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
)
_invariant_violations = _meter.create_gauge(
    "finmesh.ledger.invariant_violations",
    unit="{currency}",
    description="Currencies whose account balances do not sum to zero at the last check (0: the books balance)",
)
_invariant_checked = _meter.create_gauge(
    "finmesh.ledger.invariant_last_check_timestamp",
    unit="s",
    description="When the ledger invariant was last checked (Unix time)",
)


def start_counters() -> None:
    """Every known series at zero, so rates and absent() work from the first scrape."""
    for decision, statuses in PAYMENT_OUTCOMES.items():
        for status in statuses:
            _payments.add(0, {"status": status, "risk_decision": decision.value})
    for operation in CHANNEL_OPERATIONS.values():
        for state in CHANNEL_STATES:
            _channel_operations.add(0, {"operation": operation, "state": state})


def _count_payment(status: str, decision: str) -> None:
    _payments.add(1, {"status": status, "risk_decision": decision})


def count_payment(uow: UnitOfWork, status: str, decision: RiskDecision) -> None:
    """Count a payment that ended in `status` once its batch commits."""
    uow.after_commit(partial(_count_payment, status, decision.value))


def count_payment_refusal(uow: UnitOfWork, error: DomainError, decision: RiskDecision) -> None:
    """Count a payment refused for good (its refusal is stored under the key): risk's decline, or REFUSED. A
    malformed or transient refusal is not final (a retry with the key may still pay) and is not counted."""
    if isinstance(error, InvalidArgument) or error.kind == "unavailable":
        return
    status = PaymentStatus.DECLINED if decision is RiskDecision.DECLINE else REFUSED
    count_payment(uow, status, decision)


def _count_channel_operation(operation: str, state: str) -> None:
    _channel_operations.add(1, {"operation": operation, "state": state})


def count_channel_operation(uow: UnitOfWork, kind: str, state: str) -> None:
    """Count a top-up or payout (`kind` TOP_UP or PAYOUT) entering `state` once its batch commits."""
    uow.after_commit(partial(_count_channel_operation, CHANNEL_OPERATIONS[kind], state))


async def check_ledger(engine: AsyncEngine) -> int:
    """The ledger invariant: every currency's account balances (available + held + unsettled) sum to zero.

    Every transfer posts balanced entries, so a non-zero sum means a balance changed outside a transfer (a
    bug, or a hand edit). One aggregate over the accounts (one row per account, not per entry), in one
    statement, so it sees one snapshot. Sets the gauges and returns how many currencies are off."""
    async with engine.connect() as conn:
        totals = await totals_by_currency(conn)
        await conn.rollback()
    off = sorted(currency for currency, total in totals.items() if total != 0)
    _invariant_violations.set(len(off))
    _invariant_checked.set(time.time())
    if off:
        _log.error("ledger_unbalanced", currencies=",".join(off))
    return len(off)
