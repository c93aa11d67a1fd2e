"""The expand/contract rule (docs/DEPLOY.md), checked on what a revision's upgrade() asks the database to do.

Used by tests/migrations (every shipped revision, against deploy/RELEASED) and by the rollout's migrations gate
(the candidate's new revisions, against the stable version's commit).

Each revision's upgrade() runs against a PostgreSQL migration context in offline mode whose DDL layer
(alembic's impl) is replaced by a recorder. Every `op.*` call, batch-mode ones included, reaches the
impl as one call (create_table, add_column, alter_column, drop_*, execute, ...) carrying real
SQLAlchemy objects, so the check reads the columns' nullability and defaults instead of parsing SQL.
It fails closed: an impl call it does not classify, SQL that reached the real impl around the
recorder, or an upgrade() that cannot run offline are all violations.
"""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory

MARKER = "CONTRACT_AFTER_RELEASE"

# Calls that never break code reading the old shape.
_HARMLESS = {"create_table_comment", "drop_table_comment", "create_column_comment", "bulk_insert"}
# Calls that remove or reshape what the previous release reads or writes.
_CONTRACT = {"drop_table", "drop_column", "drop_index", "drop_constraint", "rename_table"}
_RECORDED = (
    _HARMLESS | _CONTRACT | {"create_table", "add_column", "create_index", "add_constraint", "alter_column", "execute"}
)
# Raw SQL that only moves data (backfills) leaves the schema as the previous release knows it.
_DATA_SQL = re.compile(r"^\s*(UPDATE|INSERT)\b", re.IGNORECASE)


def released_commit(released_file: Path) -> str:
    """The commit a deploy/RELEASED file names (its first line that is not a comment)."""
    lines = [ln.strip() for ln in released_file.read_text().splitlines()]
    return next(ln for ln in lines if ln and not ln.startswith("#"))


class _Recorder:
    """Stands in for alembic's DDL impl: records the calls above, passes everything else through."""

    def __init__(self, impl: Any) -> None:
        self._impl = impl
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        if name not in _RECORDED:
            return getattr(self._impl, name)

        def record(*args: Any, **kw: Any) -> None:
            self.calls.append((name, args, kw))

        return record


def recorded_calls(script: Script) -> tuple[list[tuple[str, tuple[Any, ...], dict[str, Any]]], str]:
    """The impl calls of `script`'s upgrade(), and any SQL that bypassed the recorder."""
    buffer = io.StringIO()
    context = MigrationContext.configure(dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer})
    recorder = _Recorder(context.impl)
    context.impl = recorder  # type: ignore[assignment]
    with Operations.context(context):
        script.module.upgrade()
    return recorder.calls, buffer.getvalue().strip()


def _judge(name: str, args: tuple[Any, ...], kw: dict[str, Any], new_tables: set[str]) -> str | None:
    """None when the call only expands; otherwise why the previous release could break."""
    if name == "create_table":
        new_tables.add(args[0].name)
        return None
    if name in _HARMLESS:
        return None
    if name in _CONTRACT:
        return f"{name}: removes what the previous release may still read or write"
    if name == "add_column":
        table, column = args[0], args[1]
        if column.primary_key:
            return f"add_column {table}.{column.name}: a new primary key column"
        if not column.nullable and column.server_default is None:
            return (
                f"add_column {table}.{column.name}: NOT NULL without a server default, so the "
                "previous release's INSERTs (which leave it out) fail"
            )
        return None
    if name == "create_index":
        index = args[0]
        if index.unique and index.table.name not in new_tables:
            return f"create_index {index.name}: unique on an existing table; the previous release may write duplicates"
        return None
    if name == "add_constraint":
        constraint = args[0]
        if constraint.table.name not in new_tables:
            return f"add_constraint on {constraint.table.name}: tightens what the previous release may write"
        return None
    if name == "alter_column":
        what = f"alter_column {args[0]}.{args[1]}"
        if kw.get("name") is not None or kw.get("type_") is not None:
            return f"{what}: renames it or changes its type"
        if kw.get("nullable") is False:
            return f"{what}: makes it NOT NULL; the previous release may still write NULL"
        if kw.get("server_default", False) is None:
            return f"{what}: drops its server default; the previous release may rely on it"
        return None
    if name == "execute":
        sql = str(args[0])
        return None if _DATA_SQL.match(sql) else f"execute {sql[:60]!r}: raw SQL other than a backfill"
    return f"{name}: not classified by the expand policy"


@dataclass
class Verdict:
    revision: str
    violations: list[str] = field(default_factory=list)
    contract_after: str | None = None


def judge(script: Script) -> Verdict:
    verdict = Verdict(script.revision, contract_after=getattr(script.module, MARKER, None))
    try:
        calls, bypassed = recorded_calls(script)
    except Exception as error:  # noqa: BLE001 - whatever failed, the policy cannot see what it does
        verdict.violations.append(f"upgrade() cannot be inspected offline: {type(error).__name__}: {error}")
        return verdict
    new_tables: set[str] = set()
    for name, args, kw in calls:
        why = _judge(name, args, kw, new_tables)
        if why:
            verdict.violations.append(why)
    if bypassed:
        verdict.violations.append(f"SQL the policy did not classify: {bypassed[:80]!r}")
    return verdict


def is_released(commit: str, released: str, repo: Path) -> bool | None:
    """True when `commit` is the released commit or older (in `repo`'s history); None when git cannot tell."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "merge-base", "--is-ancestor", commit, released],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    if done.returncode not in (0, 1):
        return False  # git knows no such commit: a typo or a release that never happened
    return done.returncode == 0


def problems(
    directory: ScriptDirectory,
    released: str,
    *,
    repo: Path,
    only: Collection[str] | None = None,
    released_name: str = "deploy/RELEASED",
) -> dict[str, list[str]]:
    """Per revision after the baseline (or per revision in `only`): why it breaks the previous release, the
    commit `released` of `repo` (empty dict: none do). `released_name` says in messages where it came from."""
    found: dict[str, list[str]] = {}
    for script in directory.walk_revisions():
        if script.down_revision is None:
            continue  # the baseline creates the first release's schema from nothing
        if only is not None and script.revision not in only:
            continue
        verdict = judge(script)
        if not verdict.violations:
            continue
        if verdict.contract_after is None:
            found[script.revision] = [
                *verdict.violations,
                f"mark it with {MARKER} = '<first release that no longer reads it>'",
            ]
            continue
        shipped = is_released(str(verdict.contract_after), released, repo)
        if shipped is None:
            # Fail closed: without history nobody can tell whether the drop is safe yet.
            found[script.revision] = [f"{MARKER}: git cannot tell whether {verdict.contract_after!r} is released"]
        elif not shipped:
            found[script.revision] = [
                f"{MARKER} = {verdict.contract_after!r} is not a release at or "
                f"before {released_name} ({released[:12]}): the previous release may "
                "still read what it removes"
            ]
    return found
