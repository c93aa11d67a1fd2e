"""The previous release's code runs against the schema HEAD's migrations build (both colors, one database).

deploy/RELEASED names the released commit. Its tree is checked out with `git worktree add`, and its own
payments integration test runs in a subprocess whose imports resolve to that tree only, against
PostgreSQL databases cloned from templates HEAD migrated. The old code's create_all then finds every
table present and changes nothing; afterwards the databases must still be exactly HEAD's schema.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from finmesh.platform.storage.db import create_engine
from finmesh.platform.storage.migrations import head_revisions
from tests.migrations.expand_policy import REPO, released_commit
from tests.migrations.support import SERVICES, diffs, migrate, require_history, revision, unavailable

PG = {
    "host": os.environ.get("FINMESH_TEST_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("FINMESH_TEST_PG_PORT", "5432")),
    "user": os.environ.get("FINMESH_TEST_PG_USER", "postgres"),
}
OLD_TEST = ["tests/integration/test_payments_slice.py", "-k", "payment_moves_exact_amounts and postgres"]
# The previous release's imports must come from its tree, not from HEAD's editable install: this
# drops every sys.path entry outside that tree that holds a `finmesh` package before anything imports
# it, then runs pytest.
_BOOTSTRAP = """
import os, sys
tree = os.environ["FINMESH_OLD_CODE_TREE"]
def foreign(p):
    p = os.path.abspath(p or ".")
    return os.path.isdir(os.path.join(p, "finmesh")) and os.path.commonpath([p, tree]) != tree
sys.path[:] = [p for p in sys.path if not foreign(p)]
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120)


def _source_roots(root: Path) -> list[Path]:
    return [
        root / "libs" / "platform",
        root / "libs" / "contracts",
        *sorted((root / "services").glob("*")),
        root / "tools",
        root,
    ]


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(database="postgres", timeout=5, **PG)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def templates(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """One PostgreSQL database per service, migrated to head by HEAD's code (then `request.param` run on payments')."""
    try:
        await _admin("SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        unavailable(f"PostgreSQL at {PG['host']}:{PG['port']} unreachable ({error})")
    names = {service: f"fmtmpl_{service}_{uuid.uuid4().hex[:8]}" for service in SERVICES}
    try:
        for service, name in names.items():
            await _admin(f'CREATE DATABASE "{name}"')
            await migrate(_url(name), service)
        sabotage = getattr(request, "param", None)
        if sabotage:
            await _execute(_url(names["payments"]), sabotage)
        yield names
    finally:
        for name in names.values():
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def released_tree(tmp_path: Path) -> AsyncIterator[Path]:
    """The released commit checked out beside this repository, removed afterwards."""
    commit = released_commit()
    require_history(REPO, commit)
    tree = tmp_path / "released"
    added = _git("worktree", "add", "--detach", str(tree), commit)
    assert added.returncode == 0, added.stderr
    try:
        yield tree
    finally:
        _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree, ignore_errors=True)
        _git("worktree", "prune")


def _url(name: str) -> str:
    return f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"


def _run_old_tests(tree: Path, templates: dict[str, str], record: Path) -> subprocess.CompletedProcess[str]:
    plugin_dir = record.parent / "plugin"
    plugin_dir.mkdir()
    shutil.copy(Path(__file__).with_name("old_code_plugin.py"), plugin_dir)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(p) for p in [*_source_roots(tree), plugin_dir]),
        "FINMESH_OLD_CODE_TREE": str(tree),
        "FINMESH_OLD_CODE_TEMPLATES": json.dumps(templates),
        "FINMESH_OLD_CODE_PG": json.dumps(PG),
        "FINMESH_OLD_CODE_RECORD": str(record),
        # Old code that knows this setting must not migrate or check: the schema is HEAD's to make.
        "FINMESH_AUTO_MIGRATE": "false",
    }
    argv = [sys.executable, "-c", _BOOTSTRAP, "-p", "old_code_plugin", "-p", "no:cacheprovider", "-q", *OLD_TEST]
    return subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=170)


async def test_released_code_runs_on_the_schema_head_migrates(
    released_tree: Path, templates: dict[str, str], tmp_path: Path
) -> None:
    """The released payments slice test passes on HEAD's schema, and leaves that schema exactly as it found it."""
    record = tmp_path / "record.jsonl"
    done = await asyncio.to_thread(_run_old_tests, released_tree, templates, record)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    made = [e for e in entries if "database" in e]
    try:
        summary = next(e for e in entries if "patched" in e)
        assert summary["patched"] == 1
        # Every module the old run imported came from the released tree, not from HEAD.
        assert all(path and Path(path).is_relative_to(released_tree) for path in summary["modules"].values())
        assert {e["label"] for e in made} == {"payments", "risk", "notify"}
        for entry in made:
            url = _url(entry["database"])
            assert await revision(url) == head_revisions(entry["label"])
            assert await diffs(url, entry["label"]) == [], entry["label"]
        payments = _url(next(e["database"] for e in made if e["label"] == "payments"))
        assert await _count(payments, "ledger_entries") > 0  # the old code really moved money here
    finally:
        for entry in made:
            await _admin(f'DROP DATABASE IF EXISTS "{entry["database"]}" WITH (FORCE)')


async def _count(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
    finally:
        await engine.dispose()


async def _execute(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("templates", ["ALTER TABLE payments DROP COLUMN risk_score"], indirect=True)
async def test_a_schema_the_released_code_cannot_use_fails_the_run(
    released_tree: Path, templates: dict[str, str], tmp_path: Path
) -> None:
    """The harness is not blind: drop one column the released code writes and its test run fails."""
    record = tmp_path / "record.jsonl"
    done = await asyncio.to_thread(_run_old_tests, released_tree, templates, record)
    assert done.returncode != 0
    assert "risk_score" in done.stdout + done.stderr
    for entry in (json.loads(line) for line in record.read_text().splitlines()):
        if "database" in entry:
            await _admin(f'DROP DATABASE IF EXISTS "{entry["database"]}" WITH (FORCE)')
