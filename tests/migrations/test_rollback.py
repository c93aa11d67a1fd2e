"""Rollback: this code on a database a newer release migrated starts, and `migrate` exits 0; failures do not."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.platform.runner import start_app
from finmesh.platform.storage.migrations import DatabaseBehind, head_revisions
from tests.migrations.support import diffs, execute, migrate, revision

# An id in payments' namespace that no release has used: "a newer release's revision".
FUTURE = "payments_9999"


async def _at_future_revision(databases) -> str:
    url = await databases.new("payments")
    await migrate(url, "payments")
    await execute(url, f"UPDATE alembic_version SET version_num = '{FUTURE}'")
    return url


def _settings(url: str, tmp_path: Path, auto_migrate: bool) -> PaymentsSettings:
    # Peers are never called here; the channels only need a syntactically valid target.
    return PaymentsSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        database_url=url,
        auto_migrate=auto_migrate,
        risk_target="127.0.0.1:1",
        notify_target="127.0.0.1:1",
        shutdown_grace_seconds=0.5,
    )


def _migrate_command(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`finmesh-payments migrate` as the Helm Job runs it (the console script is this module's main)."""
    env = {
        **os.environ,
        "FINMESH_DATABASE_URL": url,
        "FINMESH_DATA_DIR": str(tmp_path),
        "FINMESH_TRACING_ENABLED": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "finmesh.payments.main", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("auto_migrate", [True, False], ids=["auto-migrate", "job-migrates"])
async def test_code_starts_and_serves_on_a_database_ahead_of_it(databases, tmp_path: Path, auto_migrate: bool) -> None:
    """The old color after a rollback: the schema is a newer release's, the code starts and reports SERVING."""
    url = await _at_future_revision(databases)
    app = await payments_app.build(_settings(url, tmp_path, auto_migrate))
    server = await start_app(app, app.settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.server.stop(0)
        await app.close()
    assert await revision(url) == (FUTURE,)


async def test_migrate_exits_zero_on_a_database_ahead_of_the_code(databases, tmp_path: Path) -> None:
    """An older image's migrate Job after a rollback logs "database ahead of code", changes nothing, exits 0."""
    url = await _at_future_revision(databases)
    done = await asyncio.to_thread(_migrate_command, url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "database ahead of code" in done.stderr and FUTURE in done.stderr
    assert await revision(url) == (FUTURE,)


async def test_migrate_upgrades_logs_the_revision_and_starts_no_server(databases, tmp_path: Path) -> None:
    """On an empty database: head reached, the revision logged, exit 0, no port announced."""
    url = await databases.new("payments")
    done = await asyncio.to_thread(_migrate_command, url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "migrated" in done.stderr and head_revisions("payments")[0] in done.stderr
    assert '"port"' not in done.stdout
    assert await revision(url) == head_revisions("payments")
    assert await diffs(url, "payments") == []


def test_migrate_fails_when_the_database_cannot_be_reached(tmp_path: Path) -> None:
    """A real failure is a non-zero exit and a logged reason, so the Job (and the rollout) stops."""
    done = _migrate_command(f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'payments.db'}", tmp_path)
    assert done.returncode != 0
    assert "migration failed" in done.stderr


def test_an_unknown_argument_starts_nothing(tmp_path: Path) -> None:
    """`finmesh-payments migrat` (a typo) must not fall through to serving."""
    env = {**os.environ, "FINMESH_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "finmesh.payments.main", "migrat"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0 and "usage: finmesh-payments [migrate]" in done.stderr


async def test_another_services_database_is_an_error_not_ahead(databases) -> None:
    """identity's code pointed at payments' database fails loudly instead of leaving it alone as 'ahead'."""
    url = await databases.new("payments")
    await migrate(url, "payments")
    with pytest.raises(RuntimeError, match="not one of identity's revisions"):
        await migrate(url, "identity")


async def test_without_auto_migrate_a_database_behind_stops_the_start(databases, tmp_path: Path) -> None:
    """With the Job in charge, a server on a database missing its migrations refuses to start."""
    url = await databases.new("payments")
    with pytest.raises(DatabaseBehind, match="finmesh-payments migrate"):
        await payments_app.build(_settings(url, tmp_path, auto_migrate=False))
