"""AML reports: one row per filed report, listable newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.common import insert_ignoring_duplicates
from finmesh.risk.store.schema import aml_reports


async def reported_since(conn: AsyncConnection, user_id: str, kind: str, since: datetime) -> bool:
    r = aml_reports.c
    return bool(await conn.scalar(select(exists().where(r.user_id == user_id, r.kind == kind, r.created_at > since))))


async def file_report(conn: AsyncConnection, **values: Any) -> bool:
    """File a report; a second report of the same kind for the same payment is ignored."""
    return await insert_ignoring_duplicates(conn, aml_reports, **values)


async def page(conn: AsyncConnection, kind: str | None, before_seq: int | None, size: int) -> list[Any]:
    query = select(aml_reports)
    if kind:
        query = query.where(aml_reports.c.kind == kind)
    if before_seq is not None:
        query = query.where(aml_reports.c.seq < before_seq)
    return list((await conn.execute(query.order_by(aml_reports.c.seq.desc()).limit(size + 1))).all())
