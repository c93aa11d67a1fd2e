"""Small helpers the migration tests share: migrate, compare with metadata, read or stamp the revision."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from finmesh.platform.db import create_engine, create_schema
from finmesh.platform.migrations import (
    MigrationResult,
    current_heads,
    schema_diffs,
    service_package,
    upgrade,
)

SERVICES = ("identity", "payments", "risk", "notify")


async def migrate(url: str, service: str) -> MigrationResult:
    engine = create_engine(url)
    try:
        return await upgrade(engine, service)
    finally:
        await engine.dispose()


async def create_all(url: str, service: str) -> None:
    engine = create_engine(url)
    try:
        await create_schema(engine, service_package(service).metadata)
    finally:
        await engine.dispose()


async def diffs(url: str, service: str) -> list[Any]:
    """compare_metadata between the live database and the service's metadata (HEAD's code)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(schema_diffs, service_package(service).metadata)
    finally:
        await engine.dispose()


async def revision(url: str) -> tuple[str, ...]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(current_heads)
    finally:
        await engine.dispose()


async def execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()
