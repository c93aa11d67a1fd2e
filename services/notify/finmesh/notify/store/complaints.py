"""Complaint tickets, their history, and the record of each missed deadline."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.domain.complaints import ACCEPTED, OPEN, RESPONDED
from finmesh.notify.store.schema import complaint_escalations, complaint_events, complaints

c = complaints
_STAMP = {"ACCEPTED": "accepted_at", "RESPONDED": "responded_at", "RESOLVED": "resolved_at"}


async def get(conn: AsyncConnection, complaint_id: str, *, lock: bool = False) -> Any:
    query = select(c).where(c.c.complaint_id == complaint_id)
    return (await conn.execute(query.with_for_update() if lock else query)).first()


async def insert_complaint(conn: AsyncConnection, values: dict[str, Any]) -> Any:
    await conn.execute(insert(c).values(**values))
    return await get(conn, values["complaint_id"])


async def move(conn: AsyncConnection, row: Any, target: str, note: bytes | None, now: datetime) -> Any:
    """Change state (guarded by the state we read, so a concurrent move loses cleanly) and log it."""
    result = await conn.execute(
        update(c)
        .where(c.c.complaint_id == row.complaint_id, c.c.state == row.state)
        .values(state=target, **{_STAMP[target]: now})
    )
    if not result.rowcount:
        return None
    await conn.execute(
        insert(complaint_events).values(
            complaint_id=row.complaint_id, from_state=row.state, to_state=target, note_sealed=note, at=now
        )
    )
    return await get(conn, row.complaint_id)


async def page(conn: AsyncConnection, state: str, after: str, limit: int) -> list[Any]:
    query = select(c)
    if state:
        query = query.where(c.c.state == state)
    if after:
        query = query.where(c.c.complaint_id > after)
    return list((await conn.execute(query.order_by(c.c.complaint_id).limit(limit))).all())


async def overdue(conn: AsyncConnection, now: datetime, limit: int = 500) -> list[Any]:
    """Unresolved complaints with at least one deadline passed (escalated ones too: a later stage may be due)."""
    query = (
        select(c)
        .where(
            c.c.state != "RESOLVED",
            or_(c.c.accept_due <= now, c.c.respond_due <= now, c.c.resolve_due <= now),
        )
        .order_by(c.c.complaint_id)
        .limit(limit)
    )
    return list((await conn.execute(query)).all())


async def escalated_stages(conn: AsyncConnection, complaint_id: str) -> set[str]:
    e = complaint_escalations
    return set((await conn.scalars(select(e.c.stage).where(e.c.complaint_id == complaint_id))).all())


async def claim_escalation(conn: AsyncConnection, complaint_id: str, stage: str, now: datetime) -> bool:
    """True for the one caller that records this missed deadline first."""
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(complaint_escalations).values(complaint_id=complaint_id, stage=stage, escalated_at=now)
            )
    except IntegrityError:
        return False
    await conn.execute(update(c).where(c.c.complaint_id == complaint_id).values(escalated=True))
    return True


async def deadline_counts(conn: AsyncConnection, now: datetime, soon: datetime) -> tuple[int, int]:
    """Unresolved complaints whose current stage's deadline passed, and those whose falls in (now, soon].

    A complaint's current deadline is the next one it has not met (accept while OPEN, respond while
    ACCEPTED, resolve while RESPONDED); the later ones never come before it, so it alone says whether the
    complaint is late. Reads the unresolved ones only, through ix_complaints_state."""
    due = case(
        (c.c.state == OPEN, c.c.accept_due),
        (c.c.state == ACCEPTED, c.c.respond_due),
        else_=c.c.resolve_due,
    )
    late = func.coalesce(func.sum(case((due <= now, 1), else_=0)), 0)
    near = func.coalesce(func.sum(case(((due > now) & (due <= soon), 1), else_=0)), 0)
    row = (await conn.execute(select(late, near).where(c.c.state.in_((OPEN, ACCEPTED, RESPONDED))))).one()
    return int(row[0]), int(row[1])
