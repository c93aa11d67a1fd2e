"""finmesh.platform.storage.sqlite_driver: SQLAlchemy over aiosqlite, one thread hop per statement, same answers."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from finmesh.platform.storage.db import create_engine, create_read_engine, on_demand_reads, read_sync
from finmesh.platform.storage.sqlite_driver import OneHopConnection


@pytest.fixture
async def engine(tmp_path: Path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)"))
    yield engine
    await engine.dispose()


async def test_statements_answer_as_the_dbapi_would(engine) -> None:
    async with engine.begin() as conn:
        assert isinstance(conn.sync_connection.connection.dbapi_connection, OneHopConnection)
        many = await conn.execute(text("INSERT INTO t (name) VALUES (:name)"), [{"name": "a"}, {"name": "b"}])
        assert many.rowcount == 2
        returned = await conn.execute(text("INSERT INTO t (name) VALUES (:name) RETURNING id"), {"name": "c"})
        assert returned.scalar_one() == 3
        single = await conn.execute(text("INSERT INTO t (name) VALUES (:name)"), {"name": "d"})
        assert single.lastrowid == 4
        updated = await conn.execute(text("UPDATE t SET name = name || '!' WHERE id > :id"), {"id": 1})
        assert updated.rowcount == 3
        rows = (await conn.execute(text("SELECT id, name FROM t ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b!"), (3, "c!"), (4, "d!")]
        assert (await conn.execute(text("SELECT name FROM t WHERE id = 99"))).first() is None


async def test_errors_are_the_dbapi_errors_and_roll_back(engine) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (name) VALUES ('x')"))
            await conn.execute(text("INSERT INTO t (name) VALUES ('x')"))
    with pytest.raises(OperationalError):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT nothing FROM nowhere"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0


class HopCounter:
    """Counts the calls aiosqlite hands its connection thread (each one a hop there and back)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hops: list[str] = []
        real = aiosqlite.Connection._execute

        async def counted(connection, fn, *args, **kwargs):
            self.hops.append(getattr(fn, "__name__", repr(fn)))
            return await real(connection, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)

    def take(self) -> list[str]:
        taken, self.hops[:] = list(self.hops), []
        return taken


async def test_hops_per_read_and_write(engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = create_read_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with reader.connect() as conn:  # the pool's connection is opened (and tuned) outside the count
        await conn.execute(text("SELECT 1"))
    counter = HopCounter(monkeypatch)
    try:
        async with reader.connect() as conn:
            assert (await conn.execute(text("SELECT id FROM t WHERE id IN (1, 2)"))).all() == []
        assert counter.take() == ["_run", "rollback"]  # BEGIN travels with the query (the stock adapter: ~10)
        count = await read_sync(
            reader, lambda conn: conn.execute(text("SELECT count(*) FROM t")).scalar(), autocommit=True
        )
        assert count == 0
        assert counter.take() == ["_run"]  # nothing to roll back
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (name) VALUES ('w')"))
        assert counter.take() == ["_run", "commit"]
        async with engine.begin():
            pass
        assert counter.take() == []  # a transaction that ran no statement never began
    finally:
        await reader.dispose()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT name FROM t"))).scalars().all() == ["w"]


async def test_a_reader_keeps_its_snapshot_while_a_writer_commits(engine, tmp_path: Path) -> None:
    """The BEGIN that waits for the first statement still opens the transaction before that statement."""
    reader = create_read_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    try:
        async with reader.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            async with engine.begin() as writer:
                await writer.execute(text("INSERT INTO t (name) VALUES ('late')"))
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
        async with reader.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 1
    finally:
        await reader.dispose()


async def test_a_failed_begin_surfaces_and_leaves_no_transaction(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE that cannot get the write lock fails with the statement it travels with."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'locked.db'}"
    first, second = create_engine(url), create_engine(url)
    try:
        async with first.begin() as conn:
            await conn.execute(text("CREATE TABLE u (id INTEGER PRIMARY KEY)"))
        async with first.begin() as holder:
            await holder.execute(text("INSERT INTO u (id) VALUES (1)"))
            async with second.connect() as blocked:
                raw = await blocked.get_raw_connection()
                await raw.driver_connection.execute("PRAGMA busy_timeout=50")  # outside any transaction
                with pytest.raises(OperationalError, match="locked"):
                    await blocked.execute(text("INSERT INTO u (id) VALUES (2)"))
                await blocked.rollback()
                assert not blocked.sync_connection.connection.dbapi_connection._connection._conn.in_transaction
        async with second.connect() as conn:
            assert (await conn.execute(text("SELECT id FROM u"))).scalars().all() == [1]
    finally:
        await first.dispose()
        await second.dispose()


async def test_on_demand_reads_open_a_connection_only_for_a_read(tmp_path: Path) -> None:
    reader = create_read_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        async with on_demand_reads(reader):
            assert reader.sync_engine.pool.checkedout() == 0  # a pre-check with all it needs reads nothing
        async with on_demand_reads(reader) as conn:
            assert (await conn.execute(text("SELECT 41 + 1"))).scalar() == 42
            assert (await conn.execute(text("SELECT 7"))).scalar() == 7  # the same connection again
            assert reader.sync_engine.pool.checkedout() == 1
        assert reader.sync_engine.pool.checkedout() == 0  # given back on exit
    finally:
        await reader.dispose()
