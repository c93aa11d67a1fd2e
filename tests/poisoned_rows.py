"""Rows a database refuses, to poison one item of a group-commit batch below the servicers' input checks.

nul: a NUL character, which PostgreSQL's text cannot hold (SQLite stores it, so it poisons nothing there);
surrogate: a lone surrogate, which neither driver can encode; trigger: an ordinary value that a trigger the
test installs refuses as a constraint violation, the way a bug (a row the code should never have written)
fails a batch.
"""

from __future__ import annotations

import pytest
from google.rpc import code_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.errors import InvalidArgument
from finmesh.platform.rpc.guard import unexpected_status

POISONS = ("nul", "surrogate", "trigger")
TRIGGER_VALUE = "poisoned-by-trigger"
_VALUES = {"nul": "poisoned\x00", "surrogate": "poisoned\ud800", "trigger": TRIGGER_VALUE}


def poisoned_text(poison: str) -> str:
    return _VALUES[poison]


def skip_where_harmless(poison: str, database_kind: str) -> None:
    if poison == "nul" and database_kind == "sqlite":
        pytest.skip("SQLite stores a NUL character: it poisons no batch there (PostgreSQL runs this case)")


async def refuse_rows(engine: AsyncEngine, table: str, column: str) -> None:
    """A trigger that refuses any new row of `table` whose `column` is TRIGGER_VALUE (a constraint violation)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execute(
                text(
                    f"CREATE TRIGGER refuse_poisoned BEFORE INSERT ON {table} WHEN NEW.{column} = '{TRIGGER_VALUE}' "
                    "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
                )
            )
            return
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_poisoned() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'poisoned row' USING ERRCODE = 'check_violation'; END $$"
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER refuse_poisoned BEFORE INSERT ON {table} FOR EACH ROW "
                f"WHEN (NEW.{column} = '{TRIGGER_VALUE}') EXECUTE FUNCTION refuse_poisoned()"
            )
        )


def assert_refused_as_expected(error: BaseException, poison: str) -> None:
    """What the poisoned item's caller gets: INVALID_ARGUMENT when the database could not hold its input,
    else what the servicer guard answers for any bug (INTERNAL, never UNAVAILABLE: a retry cannot help)."""
    if poison == "trigger":
        assert not isinstance(error, InvalidArgument), error
        assert unexpected_status(error).code == code_pb2.INTERNAL, repr(error)
        return
    assert isinstance(error, InvalidArgument), repr(error)
    assert "\x00" not in error.message and "\ud800" not in error.message  # nothing of the input echoed
