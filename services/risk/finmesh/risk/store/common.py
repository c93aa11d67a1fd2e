"""Small helpers the risk repositories share: portable upserts, UTC times, seq-based pages."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, Table, TypeDecorator, any_, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection


def one_of(dialect: str, column: Any, name: str) -> Any:
    """`column` equals one of the strings bound as `name`, as a statement that is the same for any number of them.

    PostgreSQL takes one array parameter (one prepared statement, whatever the batch size); SQLite one JSON
    array read by json_each. (An expanding IN would be spelled out anew on every call: SQLAlchemy renders
    the SQL again and SQLite prepares it again, measured at a third of a batch read's CPU.)
    """
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(String)))
    return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(name, type_=_JsonList))))


class _JsonList(TypeDecorator[list[str]]):
    """A list of strings bound as one JSON text (a plain json.dumps: the JSON type's processor costs more)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: Any) -> str:
        return json.dumps(value or [])


async def insert_ignoring_duplicates(conn: AsyncConnection, table: Table, **values: Any) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on either database; True when a row was added."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    result = await conn.execute(insert(table).values(**values).on_conflict_do_nothing())
    return bool(result.rowcount)


async def insert_ignoring_duplicates_many(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """insert_ignoring_duplicates() for many rows at once (executemany of one statement built once)."""
    if rows:
        await conn.execute(_ignoring_duplicates(conn.dialect.name, table), list(rows))


@functools.cache
def _ignoring_duplicates(dialect: str, table: Table) -> Any:
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(table).on_conflict_do_nothing()
