"""Top-ups and payouts: money crosses the platform's edge only when the channel has confirmed it.

Each is two writer commands around one call to the channel:
- top-up: record the operation (PENDING), ask the channel to collect, then
  credit the wallet only on SUCCEEDED;
- payout: hold the funds and record the operation, ask the channel to pay,
  then spend the hold on SUCCEEDED or release it on FAILED.
The operation id is the channel's idempotency key, so a retry (by the caller
with the same key, or by the sweeper) never moves money twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from finmesh.payments.domain.ledger import (
    CUSTOMER_KINDS,
    AccountKind,
    AccountState,
    Bucket,
    TransferKind,
    clearing_account_id,
    move,
)
from finmesh.payments.store.rows import ChannelOperation
from finmesh.payments.store.uow import UnitOfWork
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.money import MAX_MINOR_UNITS

TOP_UP = "TOP_UP"
PAYOUT = "PAYOUT"


@dataclass(frozen=True)
class ChannelRequest:
    operation_id: str
    kind: str
    account_id: str
    channel: str
    currency: str
    amount: int
    destination_token: str
    idempotency_key: str
    request_hash: bytes
    # Whose key (finmesh.platform.idempotency.caller_scope), and the id the operation takes when another
    # caller's operation holds `operation_id` (the key's id as the previous release derived it).
    idempotency_scope: str | None = None
    own_operation_id: str = ""


@dataclass(frozen=True)
class ChannelAnswer:
    """What the channel said: SUCCEEDED or FAILED, its reference, and why it failed."""

    status: str
    channel_reference: str = ""
    failure_reason: str = ""


async def _account_for(uow: UnitOfWork, request: ChannelRequest) -> AccountState:
    account = await uow.account(request.account_id)
    if account is None:
        raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=request.account_id)
    if account.kind not in CUSTOMER_KINDS:
        raise FailedPrecondition("INVALID_STATE", "top-ups and payouts serve wallets and merchant accounts only",
                                 account_id=request.account_id)
    if account.currency != request.currency:
        raise FailedPrecondition("CURRENCY_MISMATCH", f"account is in {account.currency}, not {request.currency}",
                                 account_id=request.account_id)
    return account


async def begin(uow: UnitOfWork, request: ChannelRequest) -> ChannelOperation:
    """Record the operation (and, for a payout, hold settled funds); a retry finds the one it recorded."""
    existing = await uow.channel_operation(request.operation_id)
    if existing is not None and existing.idempotency_scope not in (None, request.idempotency_scope):
        # Keys are per caller: another caller's operation has the key's first id, this one takes its own. (The
        # first id stays the usual one, so a retry on the previous release, which knows only that id, finds it.)
        request = replace(request, operation_id=request.own_operation_id)
        existing = await uow.channel_operation(request.operation_id)
    if existing is not None:
        if existing.request_hash != request.request_hash:
            raise FailedPrecondition("IDEMPOTENCY_KEY_REUSED",
                                     "this idempotency key was already used with a different request")
        return existing
    account = await _account_for(uow, request)
    if request.kind == TOP_UP and account.total + request.amount > MAX_MINOR_UNITS:
        # Refuse before the channel collects money we could not credit.
        raise FailedPrecondition("AMOUNT_OVERFLOW", "the balance would leave the supported range",
                                 account_id=request.account_id)
    if request.kind == PAYOUT:
        # Frozen accounts cannot be paid out; only settled (collected) funds leave.
        await uow.hold(request.account_id, request.amount, reference=request.operation_id, settled_only=True)
    op = ChannelOperation(
        operation_id=request.operation_id, kind=request.kind, account_id=request.account_id,
        channel=request.channel, currency=request.currency, amount=request.amount, status="PENDING",
        channel_reference="", destination_token=request.destination_token, failure_reason="",
        idempotency_key=request.idempotency_key, request_hash=request.request_hash, transfer_id=None,
        created_at=uow.now, updated_at=uow.now, idempotency_scope=request.idempotency_scope,
    )
    uow.put_channel_operation(op)
    return op


async def finish(uow: UnitOfWork, operation_id: str, answer: ChannelAnswer) -> tuple[ChannelOperation, AccountState]:
    """Apply the channel's answer to a PENDING operation; a finished one is returned as it is."""
    op = await uow.channel_operation(operation_id)
    if op is None:
        raise RuntimeError(f"channel operation {operation_id} vanished")
    if op.status == "PENDING":
        op = await _apply_answer(uow, op, answer)
    account = await uow.account(op.account_id)
    assert account is not None
    return op, account


async def _apply_answer(uow: UnitOfWork, op: ChannelOperation, answer: ChannelAnswer) -> ChannelOperation:
    clearing = clearing_account_id(op.channel, op.currency)
    transfer_id = None
    if answer.status == "SUCCEEDED":
        await uow.ensure_account(clearing, kind=AccountKind.CLEARING, currency=op.currency, channel=op.channel)
        if op.kind == TOP_UP:
            transfer = move(TransferKind.TOP_UP, clearing, op.account_id, op.currency, op.amount,
                            reference=op.operation_id)
        else:
            transfer = move(TransferKind.PAYOUT, op.account_id, clearing, op.currency, op.amount,
                            reference=op.operation_id, source_bucket=Bucket.HELD)
        transfer_id = await uow.transfer(transfer)
    elif op.kind == PAYOUT:
        await uow.release(op.account_id, op.amount, reference=op.operation_id)
    done = replace(op, status="SUCCEEDED" if answer.status == "SUCCEEDED" else "FAILED",
                   channel_reference=answer.channel_reference[:64], failure_reason=answer.failure_reason[:100],
                   transfer_id=transfer_id, updated_at=uow.now)
    uow.put_channel_operation(done)
    account = await uow.account(op.account_id)
    assert account is not None
    uow.emit(f"payments.{'topup' if op.kind == TOP_UP else 'payout'}.{done.status.lower()}.v1", op.account_id,
             account.owner_id, {"account_id": op.account_id, "operation_id": op.operation_id,
                                "amount_minor_units": op.amount, "currency_code": op.currency,
                                "channel": op.channel, "failure_reason": done.failure_reason})
    return done
