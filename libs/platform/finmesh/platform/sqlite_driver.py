"""SQLite for asyncio with one thread hop per statement: SQLAlchemy's aiosqlite adapter, cursors reworked.

aiosqlite runs each sqlite3 call on the connection's own thread, and SQLAlchemy's
adapter makes one call per DB-API step: open a cursor, execute, fetch the rows,
close the cursor. Every call is a hop to that thread and back (a queue put, a
thread wake, a wake-up of the event loop through its self-pipe, a task step),
which costs far more than SQLite answering a small indexed query from its
cache. Here a statement is a single hop: the thread opens a cursor, executes,
fetches every row and closes, and hands back the rows with what the DB-API
reads after a statement (description, rowcount, lastrowid). A read-only
transaction is three hops (BEGIN, the query, ROLLBACK) instead of about ten.

Everything else is aiosqlite and SQLAlchemy's dialect unchanged: the same
connection thread, the same pool, the same error classes. Server-side
(streaming) cursors keep the stock behaviour.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)


class _Outcome:
    """Stands in for the DB-API cursor once its statement ran: what SQLAlchemy reads off a cursor afterwards."""

    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self) -> None:
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def close(self) -> None:
        """The real cursor was closed on the connection's thread."""


def _run(connection: sqlite3.Connection, operation: str, parameters: Any,
         many: bool) -> tuple[Any, list[Any] | None, int, int | None]:
    """On the connection's thread: the whole statement, cursor to close."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else None
        return cursor.description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()
    # close() is plain: there is no thread-side cursor left to close.
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return _Outcome()  # no hop: the cursor is opened with the statement

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._statement(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._statement(operation, seq_of_parameters, many=True)

    async def _statement(self, operation: Any, parameters: Any, *, many: bool) -> None:
        driver: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            description, rows, rowcount, lastrowid = await driver._execute(
                _run, driver._conn, operation, parameters, many)
        outcome: _Outcome = self._cursor  # type: ignore[assignment]
        outcome.description, outcome.rowcount, outcome.lastrowid = description, rowcount, lastrowid
        self._rows = collections.deque(rows) if rows is not None else collections.deque()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *args: Any, **kwargs: Any) -> OneHopConnection:
        stock = super().connect(*args, **kwargs)
        return OneHopConnection(self, stock._connection)


def dbapi() -> OneHopDBAPI:
    """The DB-API module to hand create_async_engine (its `module` argument) for sqlite+aiosqlite URLs."""
    return OneHopDBAPI(aiosqlite, sqlite3)
