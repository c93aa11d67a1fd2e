"""pytest plugin loaded into the PREVIOUS release's test run (see test_old_code.py), not into this suite.

It patches that release's `Databases` fixture class (tests/conftest.py) so every PostgreSQL database it
asks for is a clone of a template HEAD's migrations built, and none is dropped: the outer test checks
the schema afterwards, then drops them. Only the standard library, pytest and asyncpg are used here,
because everything `finmesh` in this process is the old release's code.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

import asyncpg
import pytest

_TEMPLATES: dict[str, str] = json.loads(os.environ["FINMESH_OLD_CODE_TEMPLATES"])
_PG: dict[str, Any] = json.loads(os.environ["FINMESH_OLD_CODE_PG"])
_RECORD = os.environ["FINMESH_OLD_CODE_RECORD"]
_patched: list[type] = []


def _record(entry: dict[str, Any]) -> None:
    with open(_RECORD, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


async def _new(self: Any, label: str) -> str:
    if self.kind != "postgres":
        pytest.fail("the old-code run uses PostgreSQL only (select it with -k postgres)")
    # A label HEAD prepared no template for is an error: it would get a database HEAD never migrated.
    template = _TEMPLATES[label]
    name = f"fmold_{label}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(host=_PG["host"], port=_PG["port"], user=_PG["user"], database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    _record({"label": label, "database": name})
    return f"postgresql+asyncpg://{_PG['user']}@{_PG['host']}:{_PG['port']}/{name}"


async def _keep(self: Any) -> None:
    """The outer test inspects the databases after this run, then drops them."""


def pytest_plugin_registered(plugin: Any, manager: Any) -> None:
    databases = getattr(plugin, "Databases", None)
    if isinstance(databases, type) and hasattr(databases, "new") and databases not in _patched:
        databases.new = _new
        databases.drop_all = _keep
        _patched.append(databases)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # These names are the released tree's (deploy/RELEASED): its platform was still flat.
    # Proof for the outer test of which code ran: module files, and that the fixture was patched.
    modules = {
        name: getattr(sys.modules.get(name), "__file__", None)
        for name in ("finmesh.payments.app", "finmesh.platform.db", "tests.inprocess")
    }
    _record({"patched": len(_patched), "modules": modules})
