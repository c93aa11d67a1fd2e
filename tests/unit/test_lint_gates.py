"""Every gate of `make lint` can fail: each is shown a planted violation and must refuse it.

A linter that is misconfigured (wrong paths, a contract naming a module that
moved, strictness not reaching the domain) passes silently; these tests are
what proves the clean `make lint` in CI means something. Plants go in a
temporary copy where the tool allows it; import-linter reads the installed
tree, so its plant goes into the tree and is removed again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_ruff_check_refuses_an_unused_import(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("import os\n")
    result = run("ruff", "check", "--config", str(ROOT / "pyproject.toml"), str(planted))
    assert result.returncode == 1 and "F401" in result.stdout


def test_ruff_format_check_refuses_an_unformatted_file(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("x = {  'a':1 }\n")
    result = run("ruff", "format", "--check", "--config", str(ROOT / "pyproject.toml"), str(planted))
    assert result.returncode == 1 and "planted.py" in result.stdout


def test_mypy_is_strict_in_a_domain_and_default_elsewhere(tmp_path: Path) -> None:
    # Laid out as the package it pretends to be, so the per-module strictness of pyproject.toml applies.
    body = "def untyped(x):\n    return x\n\n\ndef wrong() -> int:\n    return 'text'\n"
    for layer in ("domain", "api"):
        folder = tmp_path / "finmesh" / "payments" / layer
        folder.mkdir(parents=True)
        (folder / "planted.py").write_text(body)
    config = str(ROOT / "pyproject.toml")
    domain = run(
        "mypy", "--config-file", config, "--no-incremental", "finmesh/payments/domain/planted.py", cwd=tmp_path
    )
    api = run("mypy", "--config-file", config, "--no-incremental", "finmesh/payments/api/planted.py", cwd=tmp_path)
    assert domain.returncode == 1 and "no-untyped-def" in domain.stdout and "return-value" in domain.stdout
    assert api.returncode == 1 and "return-value" in api.stdout and "no-untyped-def" not in api.stdout


DOMAIN = "services/payments/finmesh/payments/domain"


@pytest.mark.parametrize(
    ("folder", "plant", "contract"),
    [
        (DOMAIN, "import sqlalchemy\n", "Domain rules import no protobuf, gRPC, SQLAlchemy or I/O"),
        (DOMAIN, "from finmesh.risk import config\n", "Services never import each other"),
        (DOMAIN, "from finmesh.payments.api import convert\n", "Layers only point down"),
        ("services/payments/finmesh/payments/api", "import sqlalchemy\n", "api/ holds no SQL"),
        (
            "libs/platform/finmesh/platform/storage",
            "import finmesh.payments.app\n",
            "The platform never imports a service or a tool",
        ),
        ("libs/platform/finmesh/platform/privacy", "from finmesh.platform.rpc import server\n", "Platform layers"),
        (
            "tools/finmesh/cli",
            "from finmesh.payments.store import schema\n",
            "Tools and benchmarks use services' public modules only",
        ),
    ],
)
def test_import_linter_refuses_a_broken_contract(folder: str, plant: str, contract: str) -> None:
    planted = ROOT / folder / "_planted_import_violation.py"
    try:
        planted.write_text(plant)
        result = run("lint-imports", "--no-cache")
    finally:
        planted.unlink(missing_ok=True)
    assert result.returncode == 1, result.stdout
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken and "_planted_import_violation" in broken


def _protos_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    return tmp_path


def test_buf_lint_refuses_a_badly_named_field(tmp_path: Path) -> None:
    tree = _protos_copy(tmp_path)
    proto = tree / "protos/finmesh/payments/v1/planted.proto"
    proto.write_text('syntax = "proto3";\npackage finmesh.payments.v1;\nmessage Planted { string BadName = 1; }\n')
    result = run("buf", "lint", cwd=tree)
    assert result.returncode != 0 and "BadName" in result.stdout


def test_buf_breaking_refuses_a_renumbered_field(tmp_path: Path) -> None:
    tree = _protos_copy(tmp_path)
    proto = tree / "protos/finmesh/payments/v1/payments_service.proto"
    text = proto.read_text()
    field = re.search(r"\n  (string|int64) (\w+) = (\d+);", text)
    assert field is not None
    proto.write_text(text.replace(field.group(0), f"\n  {field.group(1)} {field.group(2)} = 901;", 1))
    result = run("buf", "breaking", "--against", str(ROOT), cwd=tree)
    assert result.returncode != 0 and f'"{field.group(3)}"' in result.stdout, result.stdout
