"""Migrations build exactly the schema the metadata describes, on SQLite and PostgreSQL, from any start."""

from __future__ import annotations

import asyncio

import pytest

from finmesh.platform.storage.migrations import head_revisions
from tests.migrations.support import SERVICES, create_all, diffs, execute, migrate, revision


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_build_exactly_the_metadata(databases, service: str) -> None:
    """An empty database migrated to head matches the schema modules: tables, columns, types, indexes, constraints."""
    url = await databases.new(service)
    result = await migrate(url, service)
    assert result.before == () and result.after == head_revisions(service)
    assert await diffs(url, service) == []


async def test_the_comparison_sees_a_missing_index(databases) -> None:
    """The comparison above is not blind: a migrated database missing one index shows that difference."""
    url = await databases.new("payments")
    await migrate(url, "payments")
    await execute(url, "DROP INDEX ix_payments_payer")
    found = await diffs(url, "payments")
    assert [(d[0], d[1].name) for d in found] == [("add_index", "ix_payments_payer")]


async def test_a_second_upgrade_changes_nothing(databases) -> None:
    """Every start and every Job run upgrades: at head that is a no-op."""
    url = await databases.new("payments")
    await migrate(url, "payments")
    again = await migrate(url, "payments")
    assert not again.changed and again.after == head_revisions("payments")


@pytest.mark.parametrize("service", SERVICES)
async def test_a_create_all_database_is_adopted_at_head(databases, service: str) -> None:
    """A database create_all made (before migrations existed) equals head, so it is stamped, not re-created."""
    url = await databases.new(service)
    await create_all(url, service)
    result = await migrate(url, service)
    assert result.adopted and result.after == head_revisions(service)
    assert await revision(url) == head_revisions(service)
    assert await diffs(url, service) == []


async def test_an_unversioned_database_that_differs_is_refused(databases) -> None:
    """Tables without a version that do not match this code are not migrated on a guess."""
    url = await databases.new("payments")
    await create_all(url, "payments")
    await execute(url, "DROP INDEX ix_payments_payer")
    with pytest.raises(RuntimeError, match="differ from this code's schema"):
        await migrate(url, "payments")
    assert await revision(url) == ()


async def test_both_colors_migrating_at_once_both_succeed(databases) -> None:
    """Blue and green starting together on an empty database: one migrates, the other waits and finds head."""
    url = await databases.new("payments")
    first, second = await asyncio.gather(migrate(url, "payments"), migrate(url, "payments"))
    assert first.after == second.after == head_revisions("payments")
    assert [first.changed, second.changed].count(True) == 1
    assert await diffs(url, "payments") == []
