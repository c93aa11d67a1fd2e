"""A database error's text never carries the statement's parameters: the guard logs unexpected errors with
their text, and parameters are callers' data (names, phone numbers, free text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert
from sqlalchemy.exc import IntegrityError

from finmesh.platform.storage.db import create_engine, create_read_engine, create_schema
from finmesh.platform.storage.sqlite_thread import write_thread_for

SECRET = "13800138000-a-callers-data"


def _table() -> tuple[MetaData, Table]:
    metadata = MetaData()
    return metadata, Table("people", metadata, Column("phone", String(40), primary_key=True))


async def test_engine_errors_hide_parameters(databases, tmp_path: Path) -> None:
    metadata, people = _table()
    url = await databases.new("params")
    engine = create_engine(url)
    try:
        await create_schema(engine, metadata)
        async with engine.begin() as conn:
            await conn.execute(insert(people).values(phone=SECRET))
        with pytest.raises(IntegrityError) as refused:
            async with engine.begin() as conn:
                await conn.execute(insert(people).values(phone=SECRET))
        assert SECRET not in str(refused.value)
    finally:
        await engine.dispose()
    reader = create_read_engine(url)
    try:
        assert reader.sync_engine.hide_parameters
    finally:
        await reader.dispose()


async def test_sqlite_write_thread_errors_hide_parameters(tmp_path: Path) -> None:
    """Payments' and risk's writers run SQLite transactions on a thread with a sync engine of its own."""
    metadata, people = _table()
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'thread.db'}")
    await create_schema(engine, metadata)
    thread = write_thread_for(engine, "test-writer")
    assert thread is not None

    async def add(conn: Any) -> None:
        await conn.execute(insert(people).values(phone=SECRET))

    try:
        await thread.transaction(add)
        with pytest.raises(IntegrityError) as refused:
            await thread.transaction(add)
        assert SECRET not in str(refused.value)
    finally:
        await thread.close()
        await engine.dispose()
