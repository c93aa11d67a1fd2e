"""finmesh.platform.sqlite_driver: SQLAlchemy over aiosqlite, one thread hop per statement, same answers."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from finmesh.platform.db import create_engine, create_read_engine
from finmesh.platform.sqlite_driver import OneHopConnection


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


async def test_a_read_transaction_is_three_hops(engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = create_read_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with reader.connect() as conn:  # the pool's connection is opened (and tuned) outside the count
        await conn.execute(text("SELECT 1"))
    hops: list[str] = []
    real = aiosqlite.Connection._execute

    async def counted(self, fn, *args, **kwargs):
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    try:
        async with reader.connect() as conn:
            rows = (await conn.execute(text("SELECT id FROM t WHERE id IN (1, 2)"))).all()
        taken = list(hops)
    finally:
        await reader.dispose()
    assert rows == []
    assert len(taken) == 3, taken  # BEGIN, the query, ROLLBACK (the stock adapter took about ten)
