"""Ledger-wide queries: the books balance when every currency sums to zero."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.payments.store.schema import accounts


async def totals_by_currency(conn: AsyncConnection) -> dict[str, int]:
    """Sum of every account's total balance per currency: zero when the books balance."""
    a = accounts.c
    rows = await conn.execute(select(a.currency, func.sum(a.available + a.held + a.unsettled)).group_by(a.currency))
    return {currency: int(total) for currency, total in rows}
