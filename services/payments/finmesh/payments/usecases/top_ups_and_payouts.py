"""Top-ups and payouts: money crosses the platform's edge only when the bank has confirmed it.

Each is two writer commands around one call to the bank serving the request's payment channel:
- top-up: record the operation (PENDING), ask the bank to collect, then
  credit the wallet only on SUCCEEDED;
- payout: hold the funds and record the operation, ask the bank to pay,
  then spend the hold on SUCCEEDED or release it on FAILED.
The operation id is the bank's idempotency key, so a retry (by the caller
with the same key, or by the sweeper) never moves money twice.

Before the bank is asked, the operation must fit the bank's and the tier's
caps, and the transfer its SUCCEEDED will post must fit the ledger on every
leg. That check reads today's balances; if the posting still fails once the
bank has moved the money (operations racing towards an account's range),
the operation is PARKED with the ledger's reason: final, logged once, left
for an operator to reconcile (see services/payments/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from finmesh.payments.clients.banks import BankAnswer, BankOrder
from finmesh.payments.domain import ledger
from finmesh.payments.domain import limits as caps
from finmesh.payments.domain.ledger import (
    CUSTOMER_KINDS,
    AccountKind,
    AccountState,
    Bucket,
    Transfer,
    TransferKind,
    clearing_account_id,
    move,
)
from finmesh.payments.store.rows import BankOperation
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import metrics
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.observability.logs import get_logger

TOP_UP = "TOP_UP"
PAYOUT = "PAYOUT"
# Final: the bank moved the money but the ledger refused the posting; an operator reconciles it.
PARKED = "PARKED"
_CAPPED_AS = {TOP_UP: caps.TOP_UP, PAYOUT: caps.PAYOUT}

_log = get_logger("finmesh.payments.usecases.top_ups_and_payouts")


@dataclass(frozen=True)
class OperationRequest:
    """A top-up or payout as the caller asked for it."""

    operation_id: str
    kind: str
    account_id: str
    channel: str  # the payment channel: which bank serves the operation (and whose clearing account it moves)
    currency: str
    amount: int
    destination_token: str
    idempotency_key: str
    request_hash: bytes
    # Whose key (finmesh.platform.storage.idempotency.caller_scope), and the id the operation takes when another
    # caller's operation holds `operation_id` (the key's id as the previous release derived it).
    idempotency_scope: str | None = None
    own_operation_id: str = ""

    def order(self) -> BankOrder:
        """What the bank is asked to do."""
        return BankOrder(
            self.operation_id, self.kind, self.account_id, self.currency, self.amount, self.destination_token
        )


async def _account_for(uow: UnitOfWork, request: OperationRequest) -> AccountState:
    account = await uow.account(request.account_id)
    if account is None:
        raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=request.account_id)
    if account.kind not in CUSTOMER_KINDS:
        raise FailedPrecondition(
            "INVALID_STATE",
            "top-ups and payouts serve wallets and merchant accounts only",
            account_id=request.account_id,
        )
    if account.currency != request.currency:
        raise FailedPrecondition(
            "CURRENCY_MISMATCH",
            f"account is in {account.currency}, not {request.currency}",
            account_id=request.account_id,
        )
    return account


async def begin(uow: UnitOfWork, request: OperationRequest, policy: caps.BankCapPolicy) -> BankOperation:
    """Record the operation (and, for a payout, hold settled funds); a retry finds the one it recorded.

    A new operation must fit its caps and the ledger's range first: nothing the ledger could not post
    reaches the bank.
    """
    existing = await uow.bank_operation(request.operation_id)
    if existing is not None and existing.idempotency_scope not in (None, request.idempotency_scope):
        # Keys are per caller: another caller's operation has the key's first id, this one takes its own. (The
        # first id stays the usual one, so a retry on the previous release, which knows only that id, finds it.)
        request = replace(request, operation_id=request.own_operation_id)
        existing = await uow.bank_operation(request.operation_id)
    if existing is not None:
        if existing.request_hash != request.request_hash:
            raise FailedPrecondition(
                "IDEMPOTENCY_KEY_REUSED", "this idempotency key was already used with a different request"
            )
        return existing
    account = await _account_for(uow, request)
    tier = await uow.tier(account.owner_id) if account.kind is AccountKind.CUSTOMER_WALLET else None
    policy.check(_CAPPED_AS[request.kind], request.channel, request.currency, request.amount, tier)
    if request.kind == PAYOUT:
        # Frozen accounts cannot be paid out; only settled (collected) funds leave.
        await uow.hold(request.account_id, request.amount, reference=request.operation_id, settled_only=True)
    op = BankOperation(
        operation_id=request.operation_id,
        kind=request.kind,
        account_id=request.account_id,
        channel=request.channel,
        currency=request.currency,
        amount=request.amount,
        status="PENDING",
        channel_reference="",
        destination_token=request.destination_token,
        failure_reason="",
        idempotency_key=request.idempotency_key,
        request_hash=request.request_hash,
        transfer_id=None,
        created_at=uow.now,
        updated_at=uow.now,
        idempotency_scope=request.idempotency_scope,
    )
    await _require_postable(uow, op)
    uow.put_bank_operation(op)
    metrics.count_channel_operation(uow, op.kind, op.status)
    return op


def _transfer(op: BankOperation) -> Transfer:
    """What the bank's SUCCEEDED posts: a top-up credits the account, a payout spends its hold."""
    clearing = clearing_account_id(op.channel, op.currency)
    if op.kind == TOP_UP:
        return move(TransferKind.TOP_UP, clearing, op.account_id, op.currency, op.amount, reference=op.operation_id)
    return move(
        TransferKind.PAYOUT,
        op.account_id,
        clearing,
        op.currency,
        op.amount,
        reference=op.operation_id,
        source_bucket=Bucket.HELD,
    )


async def _require_postable(uow: UnitOfWork, op: BankOperation) -> None:
    """Refuse (AMOUNT_OVERFLOW naming the account) unless every leg of the operation's transfer fits the ledger.

    A dry run of the same pure rule the posting applies, on the balances as they are now (a payout's hold
    already taken), so the bank is never asked to move money the ledger would then refuse.
    """
    await _clearing_account(uow, op)
    transfer = _transfer(op)
    states = {p.account_id: await uow.account(p.account_id) for p in transfer.postings}
    ledger.post({a: s for a, s in states.items() if s is not None}, transfer)


async def _clearing_account(uow: UnitOfWork, op: BankOperation) -> AccountState:
    return await uow.ensure_account(
        clearing_account_id(op.channel, op.currency),
        kind=AccountKind.CLEARING,
        currency=op.currency,
        channel=op.channel,
    )


async def finish(uow: UnitOfWork, operation_id: str, answer: BankAnswer) -> tuple[BankOperation, AccountState]:
    """Apply the bank's answer to a PENDING operation; a finished one is returned as it is."""
    op = await uow.bank_operation(operation_id)
    if op is None:
        raise RuntimeError(f"operation {operation_id} vanished")
    if op.status == "PENDING":
        op = await _apply_answer(uow, op, answer)
    account = await uow.account(op.account_id)
    assert account is not None
    return op, account


async def _apply_answer(uow: UnitOfWork, op: BankOperation, answer: BankAnswer) -> BankOperation:
    transfer_id = None
    status = "SUCCEEDED" if answer.status == "SUCCEEDED" else "FAILED"
    failure_reason = answer.failure_reason
    if answer.status == "SUCCEEDED":
        await _clearing_account(uow, op)
        try:
            transfer_id = await uow.transfer(_transfer(op))
        except FailedPrecondition as refusal:
            # The bank has moved the money; the ledger cannot post it (the check in begin raced another
            # operation). Retrying cannot help: park it, final, for an operator. A top-up credits nothing;
            # a payout keeps its hold, so the money that left is not spendable twice.
            status, failure_reason = PARKED, f"LEDGER_REFUSED:{refusal.reason}"
            _log.error(
                "channel_operation_parked",
                operation_id=op.operation_id,
                kind=op.kind,
                channel=op.channel,
                currency=op.currency,
                amount_minor_units=op.amount,
                reason=failure_reason,
                account_id=refusal.metadata.get("account_id", ""),
            )
    elif op.kind == PAYOUT:
        await uow.release(op.account_id, op.amount, reference=op.operation_id)
    done = replace(
        op,
        status=status,
        channel_reference=answer.reference[:64],
        failure_reason=failure_reason[:100],
        transfer_id=transfer_id,
        updated_at=uow.now,
    )
    uow.put_bank_operation(done)
    metrics.count_channel_operation(uow, op.kind, done.status)
    account = await uow.account(op.account_id)
    assert account is not None
    uow.emit(
        f"payments.{'topup' if op.kind == TOP_UP else 'payout'}.{done.status.lower()}.v1",
        op.account_id,
        account.owner_id,
        {
            "account_id": op.account_id,
            "operation_id": op.operation_id,
            "amount_minor_units": op.amount,
            "currency_code": op.currency,
            "channel": op.channel,
            "failure_reason": done.failure_reason,
        },
    )
    return done
