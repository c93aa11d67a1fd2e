"""Block list entries: active until removed or expired; removal keeps the row for audit."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, and_, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.risk.store.schema import block_list


def _active(now: datetime | BindParameter[Any]) -> ColumnElement[bool]:
    return and_(
        block_list.c.removed_at.is_(None), or_(block_list.c.expires_at.is_(None), block_list.c.expires_at > now)
    )


async def hits(conn: AsyncConnection, candidates: Iterable[tuple[str, str]], now: datetime) -> set[tuple[str, str]]:
    """Which (kind, value) pairs are actively listed; empty values are never looked up."""
    pairs = [(k, v) for k, v in candidates if v]
    if not pairs:
        return set()
    params: dict[str, Any] = {"now": now}
    for i, (kind, value) in enumerate(pairs):
        params[f"kind_{i}"], params[f"value_{i}"] = kind, value
    rows = (await conn.execute(_hits_query(len(pairs)), params)).all()
    return {(r.kind, r.value) for r in rows}


@functools.cache
def _hits_query(pairs: int) -> Any:
    """Built once per number of pairs and reused with bound values (expression building is the costly part)."""
    matches = or_(
        *(
            and_(block_list.c.kind == bindparam(f"kind_{i}"), block_list.c.value == bindparam(f"value_{i}"))
            for i in range(pairs)
        )
    )
    return select(block_list.c.kind, block_list.c.value).where(matches, _active(bindparam("now")))


async def find_active(conn: AsyncConnection, kind: str, value: str, now: datetime) -> Any:
    query = select(block_list).where(block_list.c.kind == kind, block_list.c.value == value, _active(now))
    return (await conn.execute(query.limit(1))).first()


async def add(conn: AsyncConnection, **values: Any) -> Any:
    await conn.execute(insert(block_list).values(**values))
    return await get(conn, values["entry_id"])


async def get(conn: AsyncConnection, entry_id: str) -> Any:
    return (await conn.execute(select(block_list).where(block_list.c.entry_id == entry_id))).first()


async def remove(conn: AsyncConnection, entry_id: str, now: datetime) -> bool:
    """Mark an active entry removed; False when there is no such active entry."""
    result = await conn.execute(
        update(block_list).where(block_list.c.entry_id == entry_id, _active(now)).values(removed_at=now)
    )
    return bool(result.rowcount)


async def page(conn: AsyncConnection, kind: str | None, now: datetime, before_seq: int | None, size: int) -> list[Any]:
    """Active entries, newest first, `size` + 1 rows so the caller can tell whether more follow."""
    query = select(block_list).where(_active(now))
    if kind:
        query = query.where(block_list.c.kind == kind)
    if before_seq is not None:
        query = query.where(block_list.c.seq < before_seq)
    return list((await conn.execute(query.order_by(block_list.c.seq.desc()).limit(size + 1))).all())
