"""SQLite for asyncio with one thread hop per statement: SQLAlchemy's aiosqlite adapter, cursors reworked.

aiosqlite runs each sqlite3 call on the connection's own thread, and SQLAlchemy's
adapter makes one call per DB-API step: open a cursor, execute, fetch the rows,
close the cursor. Every call is a hop to that thread and back (a queue put, a
thread wake, a wake-up of the event loop through its self-pipe, a task step),
which costs far more than SQLite answering a small indexed query from its
cache. Here a statement is a single hop: the thread opens a cursor, executes,
fetches every row and closes, and hands back the rows with what the DB-API
reads after a statement (description, rowcount, lastrowid). BEGIN waits and
travels with the transaction's first statement, and COMMIT or ROLLBACK of a
connection that holds no transaction takes no hop at all. A read-only
transaction is two hops (BEGIN with the query, ROLLBACK) instead of about ten;
a single-statement read without BEGIN (finmesh.platform.storage.db.read_sync, autocommit)
is one.

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


def _is_begin(operation: Any) -> bool:
    return isinstance(operation, str) and operation.lstrip()[:5].upper() == "BEGIN"


def _run(
    connection: sqlite3.Connection, begin: str | None, operation: str, parameters: Any, many: bool
) -> tuple[Any, list[Any] | None, int, int | None]:
    """On the connection's thread: the transaction's BEGIN if it is pending, then the whole statement."""
    if begin is not None:
        connection.execute(begin)
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
        driver: aiosqlite.Connection = self._connection  # type: ignore[assignment]  # SQLAlchemy types it as its own wrapper
        adapter: OneHopConnection = self._adapt_connection  # type: ignore[assignment]  # ours: OneHopConnection's cursor
        outcome: _Outcome = self._cursor  # type: ignore[assignment]  # what _make_new_cursor made
        if not many and not parameters and _is_begin(operation):
            # Sent with the first statement: a transaction that runs none costs nothing.
            adapter.pending_begin = operation
            self._rows = collections.deque()
            return
        async with adapter._execute_mutex:
            begin, adapter.pending_begin = adapter.pending_begin, None
            description, rows, rowcount, lastrowid = await driver._execute(  # type: ignore[no-untyped-call]  # aiosqlite's own, unannotated
                _run, driver._conn, begin, operation, parameters, many
            )
        outcome.description, outcome.rowcount, outcome.lastrowid = description, rowcount, lastrowid
        self._rows = collections.deque(rows) if rows is not None else collections.deque()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("pending_begin",)
    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.pending_begin: str | None = None

    def _holds_transaction(self) -> bool:
        """Whether there is anything to commit or roll back; a BEGIN that never ran is simply dropped.
        (sqlite3 answers in_transaction from any thread: it asks SQLite's autocommit flag, no I/O.)"""
        self.pending_begin = None
        driver: aiosqlite.Connection = self._connection  # type: ignore[assignment]  # SQLAlchemy types it as its own wrapper
        return driver._connection is not None and driver._connection.in_transaction

    def commit(self) -> None:
        if self._holds_transaction():
            super().commit()

    def rollback(self) -> None:
        if self._holds_transaction():
            super().rollback()


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *args: Any, **kwargs: Any) -> OneHopConnection:
        stock = super().connect(*args, **kwargs)
        return OneHopConnection(self, stock._connection)


def dbapi() -> OneHopDBAPI:
    """The DB-API module to hand create_async_engine (its `module` argument) for sqlite+aiosqlite URLs."""
    return OneHopDBAPI(aiosqlite, sqlite3)
