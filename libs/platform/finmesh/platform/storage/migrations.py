"""Alembic migrations of a service's database, driven from code: no alembic.ini, async URLs as configured.

Each service keeps an Alembic environment in `finmesh.<service>.migrations` (its `__init__` exposes the
service's `metadata`; `env.py` calls `run_env`). Everything here runs on the service's own async engine
through `run_sync`, so SQLite (aiosqlite) and PostgreSQL (asyncpg) need no second, synchronous driver.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import create_engine

VERSION_TABLE = "alembic_version"
# A DDL statement waits at most this long for a table lock, then the migration fails (and the Job
# retries) instead of queueing every later query of the live color behind it.
_PG_LOCK_TIMEOUT = "10s"


class DatabaseBehind(RuntimeError):
    """The database lacks migrations this code needs, and this process may not apply them."""


@dataclass(frozen=True)
class MigrationResult:
    before: tuple[str, ...]
    after: tuple[str, ...]
    # The database carries a revision this code does not know: a newer release migrated it
    # (e.g. this is the old color after a rollback). Nothing was changed.
    ahead: bool = False
    # The database had this code's tables but no version (made by create_all before migrations).
    adopted: bool = False

    @property
    def changed(self) -> bool:
        return self.before != self.after


def service_package(service: str) -> Any:
    return importlib.import_module(f"finmesh.{service}.migrations")


def alembic_config(service: str) -> Config:
    """Config for the service's script directory; `attributes["connection"]` is set per run."""
    package = service_package(service)
    config = Config()
    config.set_main_option("script_location", str(Path(package.__file__).parent))
    # <service>_<NNNN>_<words>.py: files sort in revision order.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.set_main_option("truncate_slug_length", "30")
    config.attributes["service"] = service
    return config


def script_directory(service: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(service))


def head_revisions(service: str) -> tuple[str, ...]:
    return tuple(script_directory(service).get_heads())


def run_env(metadata: MetaData) -> None:
    """Body of every service's env.py: migrate on the connection the caller handed over."""
    from alembic import context  # only importable while Alembic runs an env.py

    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None or context.is_offline_mode():
        raise RuntimeError("finmesh migrations run on a live connection: use finmesh.platform.storage.migrations")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_server_default=True,
        # The caller opened the transaction (BEGIN IMMEDIATE on SQLite): one migration run is atomic.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _lock(connection: Connection, service: str) -> None:
    """Serialise concurrent migrators (blue and green starting together) until this transaction ends.

    SQLite needs nothing: the platform engine begins every transaction with BEGIN IMMEDIATE, which
    already takes the database's write lock before the current revision is read.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock(hashtext('finmesh-migrate-{service}'))")
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{_PG_LOCK_TIMEOUT}'")


def current_heads(connection: Connection) -> tuple[str, ...]:
    return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))


def schema_diffs(connection: Connection, metadata: MetaData) -> list[Any]:
    """Alembic's autogenerate diffs between the live schema and `metadata` (empty: identical)."""
    context = MigrationContext.configure(
        connection, opts={"target_metadata": metadata, "compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


def _is_ahead(heads: tuple[str, ...], script: ScriptDirectory, service: str) -> bool:
    """True when the database is at a revision this code does not know, i.e. a newer release's.

    Revision ids start with the service's name, so another service's database (a wrong URL) is an
    error here, not mistaken for "ahead" and silently left alone.
    """
    known = {s.revision for s in script.walk_revisions()}
    unknown = [rev for rev in heads if rev not in known]
    foreign = [rev for rev in unknown if not rev.startswith(f"{service}_")]
    if foreign:
        raise RuntimeError(
            f"{service}: database is at {foreign}, which is not one of {service}'s revisions: wrong database?"
        )
    return bool(unknown)


def _upgrade_sync(connection: Connection, service: str, target: str) -> MigrationResult:
    config = alembic_config(service)
    script = ScriptDirectory.from_config(config)
    _lock(connection, service)
    before = current_heads(connection)
    if _is_ahead(before, script, service):
        return MigrationResult(before, before, ahead=True)
    adopted = False
    if not before and set(inspect(connection).get_table_names()) - {VERSION_TABLE}:
        _adopt(connection, service, config)
        adopted = True
    config.attributes["connection"] = connection
    command.upgrade(config, target)
    return MigrationResult(before, current_heads(connection), adopted=adopted)


def _adopt(connection: Connection, service: str, config: Config) -> None:
    """A database without a version but with tables was made by create_all before migrations existed.

    If it is exactly what this code's metadata describes, it is at head: stamp it. Anything else is
    refused, so a half-made or foreign schema is never migrated on a guess.
    """
    diffs = schema_diffs(connection, service_package(service).metadata)
    if diffs:
        raise RuntimeError(
            f"{service}: database has tables but no {VERSION_TABLE}, and they differ from "
            f"this code's schema ({len(diffs)} differences, first: {diffs[0]!r}); "
            "migrate it by hand or start from an empty database"
        )
    config.attributes["connection"] = connection
    command.stamp(config, "heads")


async def upgrade(engine: AsyncEngine, service: str, target: str = "heads") -> MigrationResult:
    """Upgrade the service's database to `target` in one transaction; a no-op when already there or ahead."""
    async with engine.connect() as conn:
        result = await conn.run_sync(_upgrade_sync, service, target)
        await conn.commit()
    return result


def _check_sync(connection: Connection, service: str) -> MigrationResult:
    script = script_directory(service)
    heads = current_heads(connection)
    if _is_ahead(heads, script, service):
        return MigrationResult(heads, heads, ahead=True)
    wanted = set(script.get_heads())
    # At head, or at a descendant of every head this code has: nothing missing.
    reached = {r.revision for rev in heads for r in script.iterate_revisions(rev, "base")}
    if not wanted <= reached:
        raise DatabaseBehind(
            f"{service}: database at {heads or 'no revision'}, this code needs "
            f"{sorted(wanted)}: run `finmesh-{service} migrate`"
        )
    return MigrationResult(heads, heads)


async def check(engine: AsyncEngine, service: str) -> MigrationResult:
    """Raise DatabaseBehind unless the database is at (or past) every migration this code needs."""
    async with engine.connect() as conn:
        return await conn.run_sync(_check_sync, service)


async def prepare_schema(engine: AsyncEngine, service: str, *, migrate: bool) -> MigrationResult:
    """At service start: upgrade to head (FINMESH_AUTO_MIGRATE, the local default), or only check.

    Production sets FINMESH_AUTO_MIGRATE=false: the Helm Job migrates before either color changes, and
    a server must not find itself applying DDL while the other color serves.
    """
    log = get_logger(f"finmesh.{service}")
    result = await upgrade(engine, service) if migrate else await check(engine, service)
    if result.ahead:
        log.info("database ahead of code", revision=list(result.before), known_heads=list(head_revisions(service)))
    elif result.changed:
        log.info("schema migrated", before=list(result.before), after=list(result.after), adopted=result.adopted)
    return result


async def new_revision(service: str, message: str, scratch_dir: Path) -> str:
    """Autogenerate the next revision against a scratch SQLite database at head; returns its file.

    The id is `<service>_<NNNN>`: numbered in order, and a database of another service is never
    mistaken for one a newer release migrated.
    """
    script = script_directory(service)
    number = 1 + sum(1 for _ in script.walk_revisions())
    engine = create_engine(f"sqlite+aiosqlite:///{scratch_dir / (service + '-scratch.db')}")
    try:
        await upgrade(engine, service)
        async with engine.connect() as conn:

            def generate(connection: Connection) -> str:
                config = alembic_config(service)
                config.attributes["connection"] = connection
                made = command.revision(config, message=message, autogenerate=True, rev_id=f"{service}_{number:04d}")
                return str(made.path)  # type: ignore[union-attr]  # one head, so one Script (a list is for many)

            return await conn.run_sync(generate)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """`python -m finmesh.platform.storage.migrations revision SERVICE -m MESSAGE`: write the next revision."""
    import argparse
    import asyncio
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m finmesh.platform.storage.migrations")
    sub = parser.add_subparsers(dest="command", required=True)
    rev = sub.add_parser("revision", help="autogenerate the next revision from the schema modules")
    rev.add_argument("service", choices=("identity", "payments", "risk", "notify"))
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = asyncio.run(new_revision(args.service, args.message, Path(scratch)))
    print(f"{path}: review it (types, indexes, constraints, server defaults) before committing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
