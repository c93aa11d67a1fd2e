"""Small helpers the migration tests share: migrate, compare with metadata, read or stamp the revision."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
from sqlalchemy import text

from finmesh.platform.storage.db import create_engine, create_schema
from finmesh.platform.storage.migrations import (
    MigrationResult,
    current_heads,
    schema_diffs,
    service_package,
    upgrade,
)

SERVICES = ("identity", "payments", "risk", "notify")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip with the reason printed; under CI (full clone, PostgreSQL up) fail instead."""
    print(f"not run: {reason}")
    if IN_CI:
        pytest.fail(f"{reason}; CI has full history and PostgreSQL, so this must run")
    pytest.skip(reason)


def require_history(repo: os.PathLike[str], commit: str) -> None:
    """The released commit must be in a full clone of this repository."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60)

    try:
        shallow = git("rev-parse", "--is-shallow-repository").stdout.strip()
    except OSError as error:
        unavailable(f"git unavailable ({error})")
    if shallow != "false":
        unavailable("git history unavailable (not a repository, or a shallow clone)")
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        unavailable(f"released commit {commit} is not in this clone's history")


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
