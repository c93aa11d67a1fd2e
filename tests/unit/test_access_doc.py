"""docs/ACCESS.md is the role table as the code applies it: regenerate it when the table or a contract changes."""

from __future__ import annotations

from pathlib import Path

from finmesh.cli.access import markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "ACCESS.md"


def test_access_doc_matches_the_role_table() -> None:
    assert DOC.read_text() == markdown(), (
        "docs/ACCESS.md is stale: run `.venv/bin/python -m finmesh.cli.access > docs/ACCESS.md` and commit it"
    )
