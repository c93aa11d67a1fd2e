"""Small helpers the risk repositories share: portable upserts, UTC times, seq-based pages."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_GATES: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time risk stores is UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def insert_ignoring_duplicates(conn: AsyncConnection, table: Table, **values: Any) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on either database; True when a row was added."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    result = await conn.execute(insert(table).values(**values).on_conflict_do_nothing())
    return bool(result.rowcount)


def write_gate(engine: AsyncEngine) -> AbstractAsyncContextManager[Any]:
    """On SQLite, let this process's write transactions take turns in arrival order.

    SQLite admits one writer; the others wait in its busy handler, which
    sleeps in growing steps and is not first-come-first-served, so under
    load some calls starve for a second or more. Queueing on an asyncio
    lock first leaves the database lock nearly always free when asked for.
    PostgreSQL locks rows, not the database: no gate there.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    gate = _GATES.get(engine)
    if gate is None:
        gate = _GATES[engine] = asyncio.Lock()
    return gate
