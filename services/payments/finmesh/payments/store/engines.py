"""A second engine for reads: on SQLite it must not take the write lock the platform engine takes up front.

The platform engine begins every SQLite transaction with BEGIN IMMEDIATE,
right for writers (no SQLITE_BUSY half-way) but it would queue every read
behind the ledger writer. Reads here begin DEFERRED: in WAL mode a reader
sees a consistent snapshot and never waits for the writer. query_only makes
an accidental write on this engine an error. PostgreSQL needs none of this;
it gets its own pool so reads never starve the writer of connections.

Why this is not in finmesh.platform.db: only payments has a single writer and
read-heavy handlers; other services keep the platform's one engine.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_read_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    """A bounded pool without overflow: under a burst, reads queue for a connection instead of
    opening and closing one per request."""
    if make_url(url).get_backend_name() != "sqlite":
        # No pre-ping: a read on a connection that died fails as UNAVAILABLE and is simply retried,
        # and the ping would double the round trips of every short read.
        return create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_recycle=300)
    engine = create_async_engine(url, connect_args={"timeout": 30}, pool_size=pool_size, max_overflow=0)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine
