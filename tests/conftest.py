"""Shared fixtures: databases (SQLite and PostgreSQL), in-memory spans, in-process services."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

PG_HOST = os.environ.get("FINMESH_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FINMESH_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("FINMESH_TEST_PG_USER", "postgres")
# In CI the PostgreSQL runs are required: a missing server fails instead of skipping.
PG_REQUIRED = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_SPANS = InMemorySpanExporter()


def pytest_configure(config: pytest.Config) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "finmesh-tests"}))
    provider.add_span_processor(SimpleSpanProcessor(_SPANS))
    trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans finished during the test (in-process services share the test's tracer provider)."""
    _SPANS.clear()
    yield _SPANS
    _SPANS.clear()


async def _pg_admin() -> asyncpg.Connection:
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5)


class Databases:
    """Hands out fresh, empty databases of one kind and removes them afterwards."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._tmp = tmp_path
        self._created: list[str] = []

    async def new(self, label: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite+aiosqlite:///{self._tmp / (label + '-' + uuid.uuid4().hex[:6] + '.db')}"
        name = f"fmtest_{label}_{uuid.uuid4().hex[:10]}"
        admin = await _pg_admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self._created.append(name)
        return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    async def drop_all(self) -> None:
        if not self._created:
            return
        admin = await _pg_admin()
        try:
            for name in self._created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _postgres_reachable() -> str | None:
    try:
        conn = await _pg_admin()
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        return f"{type(error).__name__}: {error}"
    await conn.close()
    return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def databases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Databases]:
    """Run the test once on SQLite and once on PostgreSQL."""
    if request.param == "postgres":
        problem = await _postgres_reachable()
        if problem:
            message = f"PostgreSQL at {PG_HOST}:{PG_PORT} unreachable ({problem})"
            if PG_REQUIRED:
                pytest.fail(message + "; CI requires it")
            pytest.skip(message)
    dbs = Databases(request.param, tmp_path)
    yield dbs
    await dbs.drop_all()
