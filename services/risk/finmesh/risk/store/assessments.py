"""Assessment rows: one per payment, and the velocity and structuring figures read back from them."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.domain.scoring import Tally
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


async def insert_assessment(conn: AsyncConnection, **values: Any) -> Any:
    return (await conn.execute(insert(assessments).values(**values).returning(*assessments.c))).one()


async def tallies(
    conn: AsyncConnection,
    subjects: Mapping[Subject, str],
    windows: Mapping[Subject, set[int]],
    currency: str,
    now: datetime,
) -> dict[tuple[Subject, int], Tally]:
    """Earlier payments per (subject, window), read from the shared table so every replica counts alike.

    One query per subject computes all of its windows at once. A subject
    with no value (no device id given) gets no tally: an empty id is not
    one busy device.
    """
    result: dict[tuple[Subject, int], Tally] = {}
    for subject, seconds_set in windows.items():
        value = subjects.get(subject, "")
        if not value or not seconds_set:
            continue
        ordered = tuple(sorted(seconds_set))
        params: dict[str, Any] = {"value": value, "currency": currency}
        params.update({f"since_{i}": window_start(now, seconds) for i, seconds in enumerate(ordered)})
        row = (await conn.execute(_tally_query(subject, len(ordered)), params)).one()
        for i, seconds in enumerate(ordered):
            result[(subject, seconds)] = Tally(count=int(row[2 * i]), amount=int(row[2 * i + 1]))
    return result


@functools.cache
def _tally_query(subject: Subject, windows: int) -> Any:
    """Built once per shape and reused with bound values: building SQL expressions costs more than running them."""
    column = _SUBJECT_COLUMNS[subject]
    counted = assessments.c.decision != Decision.DECLINE.value
    same_currency = assessments.c.currency == bindparam("currency")
    columns = []
    for i in range(windows):
        inside = assessments.c.created_at > bindparam(f"since_{i}")
        columns.append(func.coalesce(func.sum(case((inside, 1), else_=0)), 0))
        columns.append(func.coalesce(func.sum(case((and_(inside, same_currency, counted), assessments.c.amount),
                                                   else_=0)), 0))
    # The widest window (sorted last) bounds the rows read through the (subject, created_at) index.
    return select(*columns).where(column == bindparam("value"),
                                  assessments.c.created_at > bindparam(f"since_{windows - 1}"))


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
