"""Assessment rows: one per payment, and the velocity and structuring figures read back from them."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.domain.activity import WindowTotals
from finmesh.risk.domain.values import Decision, Subject
from finmesh.risk.domain.windows import window_start
from finmesh.risk.store.schema import assessments

_SUBJECT_COLUMNS = {
    Subject.USER: assessments.c.user_id,
    Subject.DEVICE: assessments.c.device_id,
    Subject.IP: assessments.c.ip_address,
}


async def find_by_payment(conn: AsyncConnection, payment_id: str) -> Any:
    return (await conn.execute(select(assessments).where(assessments.c.payment_id == payment_id))).first()


# Built once: an expanding IN takes any number of ids without a new statement (and compile) per length.
_BY_PAYMENTS = select(assessments).where(assessments.c.payment_id.in_(bindparam("ids", expanding=True)))
_INSERT = insert(assessments)


async def find_by_payments(conn: AsyncConnection, payment_ids: Iterable[str]) -> dict[str, Any]:
    ids = sorted(set(payment_ids))
    if not ids:
        return {}
    return {r.payment_id: r for r in await conn.execute(_BY_PAYMENTS, {"ids": ids})}


async def insert_many(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """One statement for a batch of assessments (executemany)."""
    if rows:
        await conn.execute(_INSERT, list(rows))


async def window_totals(conn: AsyncConnection, subject: Subject, values: Iterable[str], windows: Sequence[int],
                        now: datetime) -> list[WindowTotals]:
    """Earlier payments of many values of one subject, per currency and window (`windows` sorted, widest last).

    One statement for a whole batch; values with no payments in the widest window are simply absent.
    """
    wanted = sorted({v for v in values if v})
    if not wanted or not windows:
        return []
    params: dict[str, Any] = {"values": wanted}
    params.update({f"since_{i}": window_start(now, seconds) for i, seconds in enumerate(windows)})
    rows = await conn.execute(_totals_query(subject, len(windows)), params)
    n = len(windows)
    return [WindowTotals(subject, r[0], r[1], tuple(int(c) for c in r[2:2 + n]), tuple(int(a) for a in r[2 + n:]))
            for r in rows]


@functools.cache
def _totals_query(subject: Subject, windows: int) -> Any:
    column = _SUBJECT_COLUMNS[subject]
    counted = assessments.c.decision != Decision.DECLINE.value
    insides = [assessments.c.created_at > bindparam(f"since_{i}") for i in range(windows)]
    counts = [func.sum(case((inside, 1), else_=0)) for inside in insides]
    amounts = [func.sum(case((and_(inside, counted), assessments.c.amount), else_=0)) for inside in insides]
    # The widest window (sorted last) bounds the rows read through the (subject, created_at) index.
    return (select(column, assessments.c.currency, *counts, *amounts)
            .where(column.in_(bindparam("values", expanding=True)),
                   assessments.c.created_at > bindparam(f"since_{windows - 1}"))
            .group_by(column, assessments.c.currency))


async def earlier_just_under(
    conn: AsyncConnection, user_id: str, currency: str, low: int, high: int, since: datetime
) -> list[Any]:
    """The payer's earlier real (not synthetic), not declined payments in [low, high) since `since`."""
    a = assessments.c
    query = (
        select(a.payment_id, a.amount)
        .where(a.user_id == user_id, a.currency == currency, a.amount >= low, a.amount < high,
               a.created_at > since, a.decision != Decision.DECLINE.value, a.synthetic == 0)
        .order_by(a.created_at, a.payment_id)
    )
    return list((await conn.execute(query)).all())
