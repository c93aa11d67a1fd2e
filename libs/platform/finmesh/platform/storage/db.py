"""Async SQLAlchemy engines: SQLite (WAL, immediate transactions) or PostgreSQL, same code paths.

SQLite goes through aiosqlite with one thread hop per statement (finmesh.platform.storage.sqlite_driver).

Besides the writer engine: create_read_engine for read-heavy services (on SQLite its transactions
begin DEFERRED, so reads see a WAL snapshot instead of queueing behind writers), and write_gate,
which makes one process's SQLite writers take turns in arrival order; is_transient tells a
database error worth retrying (a dropped connection, a server restarting) from a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from finmesh.platform.storage import pool_metrics, sqlite_driver


@overload
def aware(moment: datetime) -> datetime: ...


@overload
def aware(moment: None) -> None: ...


def aware(moment: datetime | None) -> datetime | None:
    """A stored time, UTC-aware: SQLite hands back naive datetimes, and every time the mesh stores is UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


# Every engine: a database error's text leaves out the statement's parameters. The servicer guard logs an
# unexpected error with its text, and parameters are callers' data (names, phone numbers, free text).
ENGINE_DEFAULTS: dict[str, Any] = {"hide_parameters": True}


def create_engine(url: str, *, pool_size: int = 10, name: str = "primary") -> AsyncEngine:
    """Engine for `url`. SQLite gets WAL and BEGIN IMMEDIATE so writers queue instead of deadlocking.

    `name`: the pool's name in the connection pool metrics (finmesh.platform.storage.pool_metrics)."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30}, module=sqlite_driver.dbapi(), **ENGINE_DEFAULTS)
        tune_sqlite(engine.sync_engine)
    else:
        engine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **ENGINE_DEFAULTS
        )
    pool_metrics.measure(engine.sync_engine, name)
    return engine


def tune_sqlite(engine: Any) -> None:
    """WAL, durable commits, foreign keys, a busy timeout, and BEGIN IMMEDIATE, for a (sync) SQLite Engine:
    the service's writer engine, or any other engine that writes the same file (risk's writer thread)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Take the write lock up front: a read-then-write transaction cannot
        # be refused half-way with SQLITE_BUSY.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def create_schema(engine: AsyncEngine, metadata: MetaData) -> None:
    """Create missing tables (the embedded default; production runs Alembic migrations)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


def create_read_engine(url: str, *, pool_size: int = 20, name: str = "read") -> AsyncEngine:
    """An engine for reads only: on SQLite, transactions begin DEFERRED (a WAL snapshot, never
    waiting for the writer) and query_only makes an accidental write an error; on PostgreSQL, a
    pool of its own so reads never starve the writer of connections. The pool has no overflow:
    under a burst, reads queue for a connection instead of opening and closing one per request."""
    if make_url(url).get_backend_name() != "sqlite":
        # No pre-ping: a read on a connection that died fails as UNAVAILABLE and is simply retried,
        # and the ping would double the round trips of every short read.
        reads = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_recycle=300, **ENGINE_DEFAULTS)
        pool_metrics.measure(reads.sync_engine, name)
        return reads
    engine = create_async_engine(
        url,
        connect_args={"timeout": 30},
        pool_size=pool_size,
        max_overflow=0,
        module=sqlite_driver.dbapi(),
        **ENGINE_DEFAULTS,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if not conn.get_execution_options().get(_AUTOCOMMIT_READS):
            conn.exec_driver_sql("BEGIN")

    pool_metrics.measure(engine.sync_engine, name)
    return engine


_AUTOCOMMIT_READS = "finmesh_autocommit_reads"


T = TypeVar("T")


async def read_sync(engine: AsyncEngine, read: Callable[[Connection], T], *, autocommit: bool = False) -> T:
    """`read(connection)` on a pooled connection of `engine`, as plain synchronous SQLAlchemy in one greenlet.

    Each call on an AsyncConnection (connect, execute, close) bridges into a greenlet of its own; for a hot
    read of one statement that bridging cost more CPU than the statement (CreatePayment's pre-check: ~0.66 ->
    ~0.39 ms of the event loop's time). `read` must only read. `autocommit`: no transaction around the
    statements (each sees a snapshot of its own), for a read of one statement: on SQLite it spares the
    two trips to the driver's thread that BEGIN and ROLLBACK cost, on PostgreSQL two round trips."""
    return await greenlet_spawn(_read_on_connection, engine.sync_engine, read, autocommit)


def _read_on_connection(engine: Any, read: Callable[[Connection], T], autocommit: bool) -> T:
    with engine.connect() as conn:
        if autocommit and conn.dialect.name == "sqlite":
            conn.execution_options(**{_AUTOCOMMIT_READS: True})
        elif autocommit:
            # PostgreSQL: no BEGIN and ROLLBACK round trips around the statement (a flag on the connection;
            # the pool resets it on return).
            conn.execution_options(isolation_level="AUTOCOMMIT")
        return read(conn)


class OnDemandReads:
    """A read connection opened at its first statement, if any (a pre-check that usually has all it needs).

    A plain async context manager, not a generator one with an exit stack: CreatePayment enters one per call
    and almost never reads through it, and the generator machinery cost more than the rest of the check."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> OnDemandReads:
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self._conn is None:
            self._conn = await self._engine.connect()
        return await self._conn.execute(*args, **kwargs)


def on_demand_reads(engine: AsyncEngine) -> OnDemandReads:
    """`async with on_demand_reads(engine) as conn`: reads through `conn` open a connection only when made."""
    return OnDemandReads(engine)


# PostgreSQL SQLSTATEs after which the transaction is gone and the same call may succeed on another try:
# class 08 (connection exceptions) by prefix, and these: the server terminated the backend (57P01, e.g.
# pg_terminate_backend or a restart), crashed (57P02), is starting or stopping (57P03), has no connection
# slot free (53300); a serialization failure (40001) or deadlock (40P01) rolled the transaction back.
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """True when `exc` means the database was unreachable or dropped the call, not that the call is wrong.

    A retry is safe: either nothing committed, or (the connection died during COMMIT) the change did
    commit, and mutating RPCs then answer the retry from the idempotency key's stored reply.
    """
    if isinstance(exc, (ConnectionError, TimeoutError, PoolTimeout, OperationalError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        state = _sqlstate(exc.orig)
        return state is not None and (state.startswith("08") or state in _TRANSIENT_SQLSTATES)
    return False


def is_refused_value(exc: BaseException) -> bool:
    """True when `exc` means the database or its driver could not hold a value the statement carried.

    A string with a NUL (PostgreSQL, SQLSTATE 22021) or an unpaired surrogate (no UTF-8 encoding: the
    driver refuses it, asyncpg as an invalid query argument, sqlite3 as UnicodeEncodeError), a number
    out of range: SQLSTATE class 22 ("data exception"). A constraint violation (class 23) is not: it says
    the code wrote a row it should not have, not that the value cannot be stored.
    """
    if isinstance(exc, UnicodeEncodeError | DataError):
        return True
    if not isinstance(exc, DBAPIError) or is_transient(exc):
        return False
    state = _sqlstate(exc.orig)
    if state is not None:
        return state.startswith("22")
    # asyncpg checks arguments before sending them: its DataError ("invalid input for query argument")
    # is a ValueError, raised under the adapter's error.
    error: BaseException | None = exc.orig
    while error is not None:
        if isinstance(error, ValueError):
            return True
        error = error.__cause__
    return False


def failure_facts(exc: BaseException) -> dict[str, str]:
    """What a log line may say about a database failure: class names and SQLSTATE, never the message
    (it carries the SQL and its parameters, which may be personal data)."""
    driver = getattr(exc, "orig", None)
    cause = driver.__cause__ if driver is not None and driver.__cause__ is not None else driver
    return {
        "error": type(exc).__name__,
        "driver_error": type(cause).__name__ if cause is not None else "",
        "sqlstate": _sqlstate(driver) or "",
    }


def _sqlstate(error: BaseException | None) -> str | None:
    # The driver's error, or (asyncpg through SQLAlchemy's adapter) the error it was raised from.
    while error is not None:
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(state, str):
            return state
        error = error.__cause__
    return None


_GATES: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


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
