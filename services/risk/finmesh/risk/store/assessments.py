"""Assessment rows: one per payment, and the velocity and structuring figures read back from them."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, literal_column, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.domain.activity import WindowTotals
from finmesh.risk.domain.values import Decision, Subject
from finmesh.risk.domain.windows import window_start
from finmesh.risk.store.common import one_of
from finmesh.risk.store.schema import assessments

_SUBJECT_COLUMNS = {
    Subject.USER: assessments.c.user_id,
    Subject.DEVICE: assessments.c.device_id,
    Subject.IP: assessments.c.ip_address,
}


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


async def window_totals(conn: AsyncConnection, wanted: Mapping[Subject, tuple[Sequence[int], Iterable[str]]],
                        now: datetime) -> list[WindowTotals]:
    """Earlier payments of many values of each subject, per currency and window, in one statement.

    `wanted` maps a subject to (its windows sorted widest last, the values to count). Values with no
    payments inside their subject's widest window are simply absent.
    """
    counted = [(subject, windows, values) for subject, (windows, values) in wanted.items() if windows]
    if not counted:
        return []
    shape = tuple((subject, len(windows)) for subject, windows, _ in counted)
    params: dict[str, Any] = {}
    for i, (_, windows, values) in enumerate(counted):
        params[f"values_{i}"] = sorted({v for v in values if v})
        params.update({f"since_{i}_{w}": window_start(now, seconds) for w, seconds in enumerate(windows)})
    totals = []
    for r in await conn.execute(_totals_query(shape, conn.dialect.name), params):
        subject, n = shape[r[0]]
        width = (len(r) - 3) // 2
        totals.append(WindowTotals(subject, r[1], r[2], tuple(int(c) for c in r[3:3 + n]),
                                   tuple(int(a) for a in r[3 + width:3 + width + n])))
    return totals


@functools.cache
def _totals_query(shape: tuple[tuple[Subject, int], ...], dialect: str) -> Any:
    """Built once per shape and reused with bound values: building SQL expressions costs more than running them.

    One SELECT per subject, joined by UNION ALL; a subject with fewer windows than the widest pads with zeros.
    """
    width = max(n for _, n in shape)
    counted = assessments.c.decision != Decision.DECLINE.value
    parts = []
    for i, (subject, windows) in enumerate(shape):
        column = _SUBJECT_COLUMNS[subject]
        insides = [assessments.c.created_at > bindparam(f"since_{i}_{w}") for w in range(windows)]
        pad = [literal_column("0")] * (width - windows)
        counts = [func.sum(case((inside, 1), else_=0)) for inside in insides] + pad
        amounts = [func.sum(case((and_(inside, counted), assessments.c.amount), else_=0)) for inside in insides]
        # The subject's widest window (sorted last) bounds the rows read through its (subject, created_at) index.
        parts.append(select(literal_column(str(i)), column, assessments.c.currency, *counts, *amounts, *pad)
                     .where(one_of(dialect, column, f"values_{i}"),
                            assessments.c.created_at > bindparam(f"since_{i}_{windows - 1}"))
                     .group_by(column, assessments.c.currency))
    return union_all(*parts)


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
