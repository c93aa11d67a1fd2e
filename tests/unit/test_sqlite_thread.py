"""SQLite write transactions run whole on a writer's thread (finmesh.platform.storage.sqlite_thread)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)

from finmesh.platform.storage import sqlite_thread
from finmesh.platform.storage.db import create_engine
from finmesh.platform.storage.migrations import prepare_schema
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread, insert_rows, run_to_end
from finmesh.risk.store.schema import known_devices


async def _devices(engine: Any) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        return [
            tuple(r)
            for r in await conn.execute(
                select(known_devices.c.user_id, known_devices.c.device_id).order_by(known_devices.c.user_id)
            )
        ]


def test_a_coroutine_that_would_wait_for_the_loop_is_refused() -> None:
    async def waits() -> None:
        await asyncio.sleep(0)  # yields to the event loop: cannot be run to its end on a worker thread

    with pytest.raises(RuntimeError, match="waited for the event loop"):
        run_to_end(waits())


def test_only_sqlite_files_run_on_the_thread() -> None:
    assert sqlite_thread.supports(create_engine("sqlite+aiosqlite:////tmp/finmesh-risk-x.db"))
    assert not sqlite_thread.supports(create_engine("sqlite+aiosqlite://"))  # in memory: a second connection is empty


async def test_commits_are_seen_by_the_service_engine_and_failures_roll_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'risk.db'}")
    await prepare_schema(engine, "risk", migrate=True)
    thread = SqliteWriteThread(engine)
    now = datetime.now(UTC)

    async def add(conn: Any, user: str, fail: bool = False) -> int:
        await conn.execute(insert(known_devices).values(user_id=user, device_id="d", first_seen_at=now))
        if fail:
            raise ValueError("the work failed after writing")
        return int(await conn.scalar(select(func.count()).select_from(known_devices)))

    try:
        assert await thread.transaction(lambda conn: add(conn, "u1")) == 1
        with pytest.raises(ValueError):
            await thread.transaction(lambda conn: add(conn, "u2", fail=True))
        # The next transaction runs on a fresh connection and sees only what committed.
        assert await thread.transaction(lambda conn: add(conn, "u3")) == 2
        assert await _devices(engine) == [("u1", "d"), ("u3", "d")]
    finally:
        await thread.close()
        await engine.dispose()


_kinds = MetaData()
_sample = Table(
    "sample",
    _kinds,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("name", String(50), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("maybe_at", DateTime(timezone=True), nullable=True),
    Column("payload", JSON, nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("blob", LargeBinary, nullable=True),
    Column("note", String(20), nullable=False, default="(none)"),
)


def _sample_rows(count: int) -> list[dict[str, Any]]:
    moment = datetime(2026, 11, 26, 12, 34, 56, 789012, tzinfo=UTC)
    return [
        {
            "name": f"n{i} ü'\"",
            "amount": 10**15 + i,
            "at": moment,
            "maybe_at": None if i % 2 else moment,
            "payload": {"amount": str(i), "nested": [1, {"x": None}], "text": "中文"},
            "flag": bool(i % 2),
            "blob": None if i % 3 else bytes([i, 0, 255]),
            "note": f"r{i}",
        }
        for i in range(count)
    ]


def _stored(path: Path) -> list[tuple[Any, ...]]:
    """Every stored value as SQLite holds it (quote() shows type and bytes, not what a driver makes of them)."""
    with contextlib.closing(sqlite3.connect(path)) as raw:
        names = [c.name for c in _sample.columns]
        return raw.execute(f"SELECT {', '.join(f'quote({n})' for n in names)} FROM sample ORDER BY id").fetchall()


async def _written_both_ways(
    tmp_path: Path, statement: Any, rows: list[dict[str, Any]], *, seeded: bool
) -> tuple[int, int]:
    """`statement` executed with `rows` by SQLAlchemy's own executemany (stock.db) and on the write thread
    (fast.db), each on a new `sample` table (`seeded`: holding _sample_rows(7) first); both rowcounts."""
    stock = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'stock.db'}")
    fast = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}")
    thread = SqliteWriteThread(fast)
    try:
        for engine in (stock, fast):
            async with engine.begin() as conn:
                await conn.run_sync(_kinds.create_all)
                if seeded:
                    await conn.execute(insert(_sample), _sample_rows(7))
        async with stock.begin() as conn:
            on_stock = (await conn.execute(statement, rows)).rowcount

        async def run(conn: Any) -> int:
            return int((await conn.execute(statement, rows)).rowcount)

        return int(on_stock), await thread.transaction(run)
    finally:
        await thread.close()
        await stock.dispose()
        await fast.dispose()


async def test_rows_inserted_on_the_thread_are_stored_exactly_as_sqlalchemy_stores_them(tmp_path: Path) -> None:
    assert await _written_both_ways(tmp_path, insert(_sample), _sample_rows(7), seeded=False) == (7, 7)
    assert len(_stored(tmp_path / "fast.db")) == 7
    assert _stored(tmp_path / "fast.db") == _stored(tmp_path / "stock.db")


async def test_many_rows_updated_on_the_thread_are_stored_exactly_as_sqlalchemy_stores_them(tmp_path: Path) -> None:
    later = datetime(2027, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    change = (
        update(_sample)
        .where(_sample.c.name == bindparam("b_name"))
        .values(
            amount=bindparam("b_amount"),
            maybe_at=bindparam("b_at"),
            payload=bindparam("b_payload"),
            flag=bindparam("b_flag"),
        )
    )
    changes = [
        {
            "b_name": row["name"],
            "b_amount": -row["amount"],
            "b_at": None if i % 3 else later,
            "b_payload": {"changed": [i, "é"]},
            "b_flag": not row["flag"],
        }
        for i, row in enumerate(_sample_rows(7))
    ]
    assert await _written_both_ways(tmp_path, change, changes, seeded=True) == (7, 7)
    assert _stored(tmp_path / "fast.db") == _stored(tmp_path / "stock.db")


async def test_rows_that_leave_out_a_defaulted_column_get_the_default_on_the_thread(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}")
    thread = SqliteWriteThread(engine)
    rows = [{k: v for k, v in row.items() if k != "note"} for row in _sample_rows(2)]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_kinds.create_all)

        async def add(conn: Any) -> None:
            await insert_rows(conn, _sample, rows)

        await thread.transaction(add)
    finally:
        await thread.close()
        await engine.dispose()
    assert [row[-1] for row in _stored(tmp_path / "fast.db")] == ["'(none)'", "'(none)'"]
