"""Applies transfers atomically: each balance rule is checked in the same UPDATE that changes it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.payments.domain.ledger import MAY_GO_NEGATIVE, AccountKind, Transfer
from finmesh.payments.store.schema import accounts, entries, transfers
from finmesh.platform.errors import FailedPrecondition, NotFound


async def open_account(
    conn: AsyncConnection, *, owner_id: str, kind: AccountKind, currency: str, channel: str = "",
    account_id: str | None = None,
) -> Any:
    row = {
        "account_id": account_id or str(uuid.uuid4()),
        "owner_id": owner_id,
        "kind": kind.value,
        "currency": currency,
        "status": "ACTIVE",
        "channel": channel,
        "available": 0,
        "held": 0,
        "created_at": datetime.now(UTC),
    }
    await conn.execute(insert(accounts).values(**row))
    return await get_account(conn, row["account_id"])


async def get_account(conn: AsyncConnection, account_id: str) -> Any:
    return (await conn.execute(select(accounts).where(accounts.c.account_id == account_id))).first()


async def ensure_account(conn: AsyncConnection, account_id: str, **fields: Any) -> None:
    """Open a platform account (clearing, fee, reserve) with a fixed id if it is missing."""
    if await get_account(conn, account_id) is None:
        await open_account(conn, account_id=account_id, **fields)


async def apply_transfer(conn: AsyncConnection, transfer: Transfer, *, reference: str = "",
                         debit_from_held: frozenset[str] = frozenset()) -> str:
    """Post `transfer`; refuse (raising, so the caller's transaction rolls back) if any rule fails.

    Accounts are touched in id order so concurrent transfers lock rows in one
    order and cannot deadlock. Accounts in `debit_from_held` are debited from
    their held balance (capturing a hold) instead of the available one.
    """
    now = datetime.now(UTC)
    for posting in sorted(transfer.postings, key=lambda p: p.account_id):
        if posting.amount < 0:
            await _debit(conn, posting.account_id, -posting.amount, transfer.currency,
                         from_held=posting.account_id in debit_from_held)
        else:
            await _credit(conn, posting.account_id, posting.amount, transfer.currency)
    transfer_id = str(uuid.uuid4())
    await conn.execute(
        insert(transfers).values(
            transfer_id=transfer_id, kind=transfer.kind.value, currency=transfer.currency,
            amount=transfer.amount, reference=reference, created_at=now,
        )
    )
    await conn.execute(
        insert(entries),
        [
            {"transfer_id": transfer_id, "account_id": p.account_id, "amount": p.amount,
             "currency": transfer.currency, "created_at": now}
            for p in transfer.postings
        ],
    )
    return transfer_id


async def _debit(conn: AsyncConnection, account_id: str, amount: int, currency: str, *, from_held: bool) -> None:
    a = accounts.c
    if from_held:
        # Held funds were reserved by this payment; a frozen account's holds still settle.
        values: dict[str, Any] = {"held": a.held - amount}
        rule = a.held >= amount
    else:
        values = {"available": a.available - amount}
        rule = and_(a.status == "ACTIVE", or_(a.available >= amount, a.kind.in_([k.value for k in MAY_GO_NEGATIVE])))
    result = await conn.execute(
        update(accounts).where(a.account_id == account_id, a.currency == currency, rule).values(**values)
    )
    if result.rowcount != 1:
        await _explain_refusal(conn, account_id, currency)


async def _credit(conn: AsyncConnection, account_id: str, amount: int, currency: str) -> None:
    a = accounts.c
    result = await conn.execute(
        update(accounts).where(a.account_id == account_id, a.currency == currency)
        .values(available=a.available + amount)
    )
    if result.rowcount != 1:
        await _explain_refusal(conn, account_id, currency)


async def hold(conn: AsyncConnection, account_id: str, amount: int, currency: str) -> None:
    """Reserve funds: available -> held, only from an active account with enough available."""
    a = accounts.c
    result = await conn.execute(
        update(accounts)
        .where(a.account_id == account_id, a.currency == currency, a.status == "ACTIVE", a.available >= amount)
        .values(available=a.available - amount, held=a.held + amount)
    )
    if result.rowcount != 1:
        await _explain_refusal(conn, account_id, currency)


async def release(conn: AsyncConnection, account_id: str, amount: int) -> None:
    """Give reserved funds back: held -> available."""
    a = accounts.c
    result = await conn.execute(
        update(accounts).where(a.account_id == account_id, a.held >= amount)
        .values(available=a.available + amount, held=a.held - amount)
    )
    if result.rowcount != 1:
        raise RuntimeError(f"hold on {account_id} is smaller than the release")


async def _explain_refusal(conn: AsyncConnection, account_id: str, currency: str) -> None:
    row = await get_account(conn, account_id)
    if row is None:
        raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=account_id)
    if row.currency != currency:
        raise FailedPrecondition("CURRENCY_MISMATCH", f"account is in {row.currency}, not {currency}",
                                 account_id=account_id)
    if row.status != "ACTIVE":
        raise FailedPrecondition("ACCOUNT_FROZEN", "account is frozen", account_id=account_id)
    raise FailedPrecondition("INSUFFICIENT_FUNDS", "insufficient available balance", account_id=account_id)


async def require_account(conn: AsyncConnection, account_id: str) -> Any:
    row = await get_account(conn, account_id)
    if row is None:
        raise NotFound("ACCOUNT_NOT_FOUND", "account not found", account_id=account_id)
    return row


async def totals_by_currency(conn: AsyncConnection) -> dict[str, int]:
    """Sum of every account's balance per currency: zero when the books balance."""
    rows = await conn.execute(
        select(accounts.c.currency, func.sum(accounts.c.available + accounts.c.held)).group_by(accounts.c.currency)
    )
    return {currency: int(total) for currency, total in rows}
