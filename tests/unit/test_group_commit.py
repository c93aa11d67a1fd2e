"""commit_apart: a group commit that one bad item cannot fail, and which failures are an item's own."""

from __future__ import annotations

import math

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError

from finmesh.platform.errors import InvalidArgument
from finmesh.platform.storage.db import is_refused_value, is_transient
from finmesh.platform.storage.group_commit import commit_apart


class Rejected(Exception):
    """A database error that is not transient and not about a value (as a constraint violation is)."""


class Ledger:
    """A fake transactional store: a transaction commits all its items or, if any is bad, none."""

    def __init__(self, bad: set[str] = frozenset(), failure: type[Exception] = Rejected) -> None:  # type: ignore[assignment]
        self.bad = bad
        self.failure = failure
        self.transactions: list[list[str]] = []
        self.committed: list[str] = []

    async def commit(self, items: list[str]) -> list[str]:
        self.transactions.append(items)
        # A key committed earlier or twice in one transaction violates uniqueness, as a bug's duplicate row would.
        seen = set(self.committed)
        for item in items:
            key = item.split("#")[0]
            if item in self.bad or key in seen:
                raise self.failure(f"transaction refused because of {item}")
            seen.add(key)
        self.committed.extend(item.split("#")[0] for item in items)
        return [f"ok {item}" for item in items]


async def test_a_batch_that_commits_takes_one_transaction() -> None:
    ledger = Ledger()
    items = [str(i) for i in range(21)]
    assert await commit_apart(items, ledger.commit, writer="test") == [f"ok {i}" for i in items]
    assert ledger.transactions == [items]


@pytest.mark.parametrize(("size", "bad"), [(21, 7), (21, 0), (21, 20), (256, 100), (2, 1)])
async def test_one_bad_item_fails_alone_and_the_others_commit_in_order(size: int, bad: int) -> None:
    items = [str(i) for i in range(size)]
    ledger = Ledger(bad={str(bad)})
    results = await commit_apart(items, ledger.commit, writer="test")
    assert isinstance(results[bad], Rejected)
    assert results[:bad] + results[bad + 1 :] == [f"ok {i}" for i in items if i != str(bad)]
    assert ledger.committed == [i for i in items if i != str(bad)]  # in the order they came
    # Halves: the failed batch, then two transactions per level of the split at most (each item alone: size + 1).
    assert len(ledger.transactions) <= 1 + 2 * math.ceil(math.log2(size))


async def test_several_bad_items_each_fail_alone() -> None:
    items = [str(i) for i in range(40)]
    ledger = Ledger(bad={"3", "4", "30"})
    results = await commit_apart(items, ledger.commit, writer="test")
    assert [i for i, r in zip(items, results, strict=True) if isinstance(r, Rejected)] == ["3", "4", "30"]
    assert ledger.committed == [i for i in items if i not in {"3", "4", "30"}]


async def test_items_that_clash_with_each_other_commit_the_first_and_refuse_the_second() -> None:
    """Two items that only fail together (one key twice): split apart, the first commits, the second is refused
    by what the first committed, as it would have been in a later batch."""
    items = ["a", "k#1", "b", "c", "k#2", "d"]
    ledger = Ledger()
    results = await commit_apart(items, ledger.commit, writer="test")
    assert [type(r).__name__ if isinstance(r, Exception) else r for r in results] == [
        "ok a",
        "ok k#1",
        "ok b",
        "ok c",
        "Rejected",
        "ok d",
    ]
    assert ledger.committed == ["a", "k", "b", "c", "d"]


async def test_a_transient_failure_fails_every_item_at_once() -> None:
    """The database unreachable is no item's fault: no split (it would queue a transaction per part behind the
    outage); each caller gets the error and retries with its key."""
    ledger = Ledger(bad={"3"}, failure=ConnectionResetError)
    items = [str(i) for i in range(8)]
    results = await commit_apart(items, ledger.commit, writer="test")
    assert all(isinstance(r, ConnectionResetError) for r in results) and is_transient(results[0])
    assert ledger.transactions == [items]


class _Driver(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


def _database_error(sqlstate: str | None, kind: type[DBAPIError] = DBAPIError) -> DBAPIError:
    return kind("INSERT ...", {}, _Driver(sqlstate))


def _asyncpg_argument_error() -> DBAPIError:
    """asyncpg refuses an argument before sending it (its DataError is a ValueError), under the adapter's error."""
    adapter = _Driver(None)
    adapter.__cause__ = ValueError("invalid input for query argument $1")
    return DBAPIError("INSERT ...", {}, adapter)


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (_database_error("22021"), True),  # PostgreSQL: a NUL in text
        (_database_error("22003"), True),  # a number out of range
        (_asyncpg_argument_error(), True),  # an unpaired surrogate, refused by asyncpg
        ("\ud800".encode, True),  # the same, refused by sqlite3 as UnicodeEncodeError
        (_database_error("23505", IntegrityError), False),  # a constraint a bug violated
        (_database_error("57P01"), False),  # the server went away: transient
        (RuntimeError("a bug"), False),
    ],
)
async def test_an_item_that_fails_alone_gets_invalid_argument_only_for_a_value_no_database_holds(
    error: object, refused: bool
) -> None:
    if callable(error):
        try:
            error()
        except UnicodeEncodeError as raised:
            error = raised
    assert isinstance(error, Exception)
    assert is_refused_value(error) is refused

    async def fail(items: list[str]) -> list[str]:
        raise error

    [result] = await commit_apart(["x"], fail, writer="test")
    if not refused:
        assert result is error
        return
    assert isinstance(result, InvalidArgument) and result.__cause__ is error
    assert [v.field for v in result.violations] == ["request"]
    assert "driver error" not in result.message and "INSERT" not in result.message  # nothing of the database's text
