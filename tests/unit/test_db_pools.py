"""Connection pools on PostgreSQL take their size from the settings (nothing connects here)."""

from __future__ import annotations

from finmesh.platform.config import ServiceSettings
from finmesh.platform.storage.db import create_engine, create_read_engine

URL = "postgresql+asyncpg://finmesh@127.0.0.1:5432/pools"


async def test_engines_are_sized_by_the_settings(monkeypatch) -> None:
    monkeypatch.setenv("FINMESH_DB_POOL_SIZE", "3")
    monkeypatch.setenv("FINMESH_DB_READ_POOL_SIZE", "4")
    settings = ServiceSettings()
    writer = create_engine(URL, pool_size=settings.db_pool_size)
    reader = create_read_engine(URL, pool_size=settings.db_read_pool_size)
    try:
        # The main engine may open as many again under a burst; reads queue instead of overflowing.
        assert (writer.pool.size(), writer.pool._max_overflow) == (3, 3)
        assert (reader.pool.size(), reader.pool._max_overflow) == (4, 0)
    finally:
        await writer.dispose()
        await reader.dispose()
