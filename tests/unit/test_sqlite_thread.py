"""SQLite write transactions run whole on a writer's thread (finmesh.platform.sqlite_thread)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from finmesh.platform import sqlite_thread
from finmesh.platform.db import create_engine
from finmesh.platform.migrations import prepare_schema
from finmesh.platform.sqlite_thread import SqliteWriteThread, run_to_end
from finmesh.risk.store.schema import known_devices


async def _devices(engine: Any) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(select(known_devices.c.user_id, known_devices.c.device_id)
                                                     .order_by(known_devices.c.user_id))]


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
