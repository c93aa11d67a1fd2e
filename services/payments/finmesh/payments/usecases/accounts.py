"""Opening, freezing and unfreezing accounts."""

from __future__ import annotations

from finmesh.payments.domain.ledger import AccountKind, AccountState, AccountStatus, platform_account_id
from finmesh.payments.store.uow import UnitOfWork
from finmesh.platform.errors import NotFound


async def open_account(uow: UnitOfWork, *, owner_id: str, kind: AccountKind, currency: str) -> AccountState:
    """A new customer or merchant account; the platform's fee and reserve accounts are one per currency."""
    if kind in (AccountKind.PLATFORM_FEE, AccountKind.RISK_RESERVE):
        return await uow.ensure_account(platform_account_id(kind, currency), kind=kind, currency=currency)
    account = await uow.open_account(owner_id=owner_id, kind=kind, currency=currency)
    uow.emit(
        "payments.account.opened.v1",
        account.account_id,
        owner_id,
        {"account_id": account.account_id, "kind": kind.value, "currency_code": currency},
    )
    return account


async def set_frozen(uow: UnitOfWork, account_id: str, frozen: bool, reason: str) -> AccountState:
    """Freeze or unfreeze; asking for the state an account is already in changes nothing."""
    account = await uow.account(account_id)
    if account is None:
        raise NotFound("ACCOUNT_NOT_FOUND", "account not found", account_id=account_id)
    status = AccountStatus.FROZEN if frozen else AccountStatus.ACTIVE
    if account.status is status:
        return account
    changed = uow.set_status(account, status, reason)
    uow.emit(
        f"payments.account.{status.value.lower()}.v1",
        account_id,
        account.owner_id,
        {"account_id": account_id, "reason": reason},
    )
    return changed
