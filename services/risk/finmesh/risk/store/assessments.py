"""Assessment rows: one per payment, and the velocity and structuring figures read back from them."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.domain.values import Decision
from finmesh.risk.store.common import one_of
from finmesh.risk.store.schema import assessments


async def find_by_payment(conn: AsyncConnection, payment_id: str) -> Any:
    return (await conn.execute(select(assessments).where(assessments.c.payment_id == payment_id))).first()


_INSERT = insert(assessments)


@functools.cache
def _by_payments(dialect: str) -> Any:
    return select(assessments).where(one_of(dialect, assessments.c.payment_id, "ids"))


async def find_by_payments(conn: AsyncConnection, payment_ids: Iterable[str]) -> dict[str, Any]:
    ids = sorted(set(payment_ids))
    if not ids:
        return {}
    return {r.payment_id: r for r in await conn.execute(_by_payments(conn.dialect.name), {"ids": ids})}


async def insert_many(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """One statement for a batch of assessments (executemany)."""
    if rows:
        await conn.execute(_INSERT, list(rows))


async def earlier_just_under(
    conn: AsyncConnection, user_id: str, currency: str, low: int, high: int, since: datetime
) -> list[Any]:
    """The payer's earlier real (not synthetic), not declined payments in [low, high) since `since`."""
    a = assessments.c
    query = (
        select(a.payment_id, a.amount)
        .where(
            a.user_id == user_id,
            a.currency == currency,
            a.amount >= low,
            a.amount < high,
            a.created_at > since,
            a.decision != Decision.DECLINE.value,
            a.synthetic == 0,
        )
        .order_by(a.created_at, a.payment_id)
    )
    return list((await conn.execute(query)).all())
