"""SQLite write transactions run whole on one worker thread: one hand-off per transaction, not one per driver call.

aiosqlite runs every driver call (cursor, execute, fetch, close, BEGIN, COMMIT, the pool's reset) on its
own thread and hands each result back through the event loop: about thirty hand-offs for one risk
assessment batch with the stock adapter (six or so with the platform's one hop per statement), each a thread
switch, a self-pipe write and a loop wake-up, and SQLAlchemy's async layer adds a greenlet per statement.
Measured, they were most of a batch's CPU (3.3 ms for a batch of one with the stock adapter, 1.4 ms here).
Here the transaction's code runs on a thread of its own over a plain sqlite3 connection to the same file,
set up as the platform's async engine sets up its own (WAL, synchronous FULL, BEGIN IMMEDIATE), and the
event loop waits for it once. Risk's assessment writer and payments' ledger writer run their batches here.

The transaction's code stays the async store code every other caller uses: it is given a connection
whose `execute` and `scalar` complete at once, so its coroutine never suspends and runs to its end in a
single step on the worker thread (run_to_end). Anything that would really suspend it is a bug, and says so.
It runs in a copy of the submitting task's context (as asyncio.to_thread does), so context variables (the
caller's principal, trace context) read the same on the thread.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, DateTime, Insert, Table, Update, insert
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.storage.db import ENGINE_DEFAULTS, tune_sqlite, write_gate

T = TypeVar("T")


class InThreadConnection:
    """What the store functions use of an AsyncConnection, over a sync connection on the worker thread."""

    def __init__(self, conn: Connection) -> None:
        self.sync = conn
        self.dialect = conn.dialect

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return self.sync.scalar(statement, parameters)

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if isinstance(parameters, list) and parameters:
            plan = _executemany_plan(statement, tuple(parameters[0]), self.dialect)
            if plan is not None:
                sql, binds = plan
                return self.sync.exec_driver_sql(
                    sql,
                    [
                        tuple(row[key] if process is None else process(row[key]) for key, process in binds)
                        for row in parameters
                    ],
                )
        return self.sync.execute(statement, parameters)


async def insert_rows(conn: Any, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys) into `table` in `conn`'s transaction (an AsyncConnection, or
    the write thread's connection), with an INSERT statement built once per table."""
    if rows:
        await conn.execute(_insert_of(table), rows)


_INSERTS: dict[Table, Any] = {}
# (id of a statement, the rows' keys) -> (the statement, kept so its id is not reused; its plan or None)
_PLANS: dict[tuple[int, tuple[str, ...]], tuple[Any, tuple[str, list[tuple[str, Any]]] | None]] = {}
_MAX_PLANS = 512


def _insert_of(table: Table) -> Any:
    if table not in _INSERTS:
        _INSERTS[table] = insert(table)
    return _INSERTS[table]


def _executemany_plan(statement: Any, keys: tuple[str, ...], dialect: Any) -> tuple[str, list[tuple[str, Any]]] | None:
    """SQL and per-parameter bind processors to send rows of `keys` for `statement` straight to the driver.

    SQLAlchemy's per-row parameter handling (construct_params, then the processors) was the largest single
    part of a ledger batch's CPU. Here the statement is compiled once per key set by SQLAlchemy itself, and
    each value goes through its own type's bind processor, so the driver gets exactly what SQLAlchemy would
    send. None (SQLAlchemy's own path) for anything else: a SELECT, a column SQLAlchemy fills per row (a
    Python-side default), RETURNING, expanding IN lists, or rows whose keys are not the statement's binds.
    """
    cache_key = (id(statement), keys)
    entry = _PLANS.get(cache_key)
    if entry is None or entry[0] is not statement:
        if len(_PLANS) >= _MAX_PLANS:  # statements built per call would otherwise pile up here
            _PLANS.clear()
        entry = _PLANS[cache_key] = (statement, _plan(statement, keys, dialect))
    return entry[1]


def _plan(statement: Any, keys: tuple[str, ...], dialect: Any) -> tuple[str, list[tuple[str, Any]]] | None:
    if not isinstance(statement, Insert | Update) or dialect.paramstyle != "qmark":
        return None
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    if (
        not compiled.positional
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.effective_returning
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or sorted(compiled.positiontup or ()) != sorted(keys)
    ):
        return None
    return compiled.string, [
        (name, _processor(compiled.binds[name].type, dialect)) for name in compiled.positiontup or ()
    ]


def _processor(type_: Any, dialect: Any) -> Callable[[Any], Any] | None:
    process: Callable[[Any], Any] | None = type_.dialect_impl(dialect).bind_processor(dialect)
    if process is None or not isinstance(type_, DateTime):
        return process
    # A writer batch stamps most of its rows with one `now`: format that datetime once, not once a row.
    # (Keyed by identity, and only for datetimes, which are immutable.)
    last: list[tuple[Any, Any]] = [(None, None)]

    def process_datetime(value: Any) -> Any:
        seen, text = last[0]
        if value is seen and value is not None:
            return text
        text = process(value)
        last[0] = (value, text)  # one assignment: another write thread may share this plan
        return text

    return process_datetime


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (it awaits only InThreadConnection) to its result, here and now."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        value: T = done.value  # what the coroutine returned (StopIteration types it as Any)
        return value
    coroutine.close()
    raise RuntimeError("a transaction run on the SQLite worker thread waited for the event loop")


def supports(engine: AsyncEngine) -> bool:
    """An SQLite file: a second connection to it sees what the service's engine sees (an in-memory one would not)."""
    database = engine.url.database or ""
    return engine.dialect.name == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:")


def write_thread_for(engine: AsyncEngine, name: str) -> SqliteWriteThread | None:
    """A write thread for `engine`'s SQLite file, or None where the async engine must do (PostgreSQL, in memory)."""
    return SqliteWriteThread(engine, name) if supports(engine) else None


class SqliteWriteThread:
    """Runs write transactions on one thread with one connection of its own, in the order they are submitted."""

    def __init__(self, engine: AsyncEngine, name: str = "sqlite-writer") -> None:
        self.engine = engine  # the service's engine: its write gate orders this thread's transactions with the others
        self._sync = create_sync_engine(
            engine.url.set(drivername="sqlite"),
            connect_args={"timeout": 30},
            pool_size=1,
            max_overflow=0,
            **ENGINE_DEFAULTS,
        )
        tune_sqlite(self._sync)  # the settings the service's own engine has
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        # Kept open between transactions (used only on the worker thread): a pool checkout and the rollback
        # that resets a returned connection cost as much as a small statement.
        self._conn: Connection | None = None
        self._closed = False

    async def transaction(self, work: Callable[[InThreadConnection], Coroutine[Any, Any, T]]) -> T:
        """Run `work` in one write transaction (committed if it returns, rolled back if it raises)."""
        async with write_gate(self.engine):
            context = contextvars.copy_context()
            return await asyncio.get_running_loop().run_in_executor(self._executor, context.run, self._run, work)

    def _run(self, work: Callable[[InThreadConnection], Coroutine[Any, Any, T]]) -> T:
        if self._conn is None:
            self._conn = self._sync.connect()
        try:
            with self._conn.begin():
                return run_to_end(work(InThreadConnection(self._conn)))
        except BaseException:
            self._disconnect()  # whatever went wrong, the next transaction starts on a fresh connection
            raise

    def _disconnect(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    async def close(self) -> None:
        """Let a transaction under way finish, then close the connection (off the event loop: it may wait)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._disconnect)  # on the thread that uses it
        await loop.run_in_executor(None, self._executor.shutdown)
        self._sync.dispose()


async def write_transaction(
    database: AsyncEngine | SqliteWriteThread, work: Callable[[Any], Coroutine[Any, Any, T]]
) -> T:
    """Run `work(conn)` in one write transaction, taking turns with the process's other writers: on the
    SQLite write thread where the service has one, else on the engine (behind its write gate)."""
    if isinstance(database, SqliteWriteThread):
        return await database.transaction(work)
    # The gate: on SQLite, taking turns here beats SQLite's busy handler, which sleeps in growing steps
    # (1, 2, 5, 10 ms...) while the other transaction runs.
    async with write_gate(database), database.begin() as conn:
        return await work(conn)
