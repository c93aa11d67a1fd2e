"""Assessment rows: one per payment, and the velocity counts read from them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.schema import assessments


async def find_by_payment(conn: AsyncConnection, payment_id: str) -> Any:
    return (await conn.execute(select(assessments).where(assessments.c.payment_id == payment_id))).first()


async def count_since(conn: AsyncConnection, user_id: str, since: datetime) -> int:
    """Payments by `user_id` assessed since `since`, across every replica (it is the shared database)."""
    if not user_id:
        return 0
    query = select(func.count()).where(assessments.c.user_id == user_id, assessments.c.created_at >= since)
    return int(await conn.scalar(query) or 0)


async def insert_assessment(conn: AsyncConnection, **values: Any) -> Any:
    await conn.execute(insert(assessments).values(**values))
    return await find_by_payment(conn, values["payment_id"])
