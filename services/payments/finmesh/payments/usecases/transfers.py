"""Batch transfers: many independent account-to-account moves in one call, each with its own result."""

from __future__ import annotations

from dataclasses import dataclass

from finmesh.payments.domain.ledger import MAY_GO_NEGATIVE, TransferKind, move
from finmesh.payments.store.uow import UnitOfWork
from finmesh.platform.errors import DomainError, FailedPrecondition


@dataclass(frozen=True)
class Item:
    reference: str
    source: str
    destination: str
    currency: str
    amount: int
    problem: DomainError | None = None  # the item failed validation; it is reported, not run


@dataclass(frozen=True)
class ItemResult:
    reference: str
    transfer_id: str = ""
    error: DomainError | None = None


async def run(uow: UnitOfWork, items: list[Item]) -> list[ItemResult]:
    """Post items in order (a later item may spend what an earlier one brought); a refused item changes nothing."""
    await uow.load_accounts([i.source for i in items] + [i.destination for i in items])
    results = []
    for item in items:
        if item.problem is not None:
            results.append(ItemResult(item.reference, error=item.problem))
            continue
        token = uow.checkpoint()
        try:
            for account_id in (item.source, item.destination):
                account = await uow.account(account_id)
                if account is not None and account.kind in MAY_GO_NEGATIVE:
                    # A clearing account may go negative: moving from it would mint money.
                    raise FailedPrecondition(
                        "INVALID_STATE", "clearing accounts move only through channel operations", account_id=account_id
                    )
            transfer_id = await uow.transfer(
                move(
                    TransferKind.TRANSFER,
                    item.source,
                    item.destination,
                    item.currency,
                    item.amount,
                    reference=item.reference,
                )
            )
        except DomainError as error:
            uow.rollback(token)
            results.append(ItemResult(item.reference, error=error))
            continue
        results.append(ItemResult(item.reference, transfer_id=transfer_id))
    return results
