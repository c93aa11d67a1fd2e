"""The expand policy (finmesh.rollout.expand_policy) bound to this repository and its deploy/RELEASED."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from finmesh.rollout import expand_policy

REPO = Path(__file__).resolve().parents[2]
RELEASED_FILE = REPO / "deploy" / "RELEASED"


def released_commit() -> str:
    return expand_policy.released_commit(RELEASED_FILE)


def problems(directory: ScriptDirectory, released: str) -> dict[str, list[str]]:
    """Per revision after the baseline: why it breaks the previous release (empty dict: none do)."""
    return expand_policy.problems(directory, released, repo=REPO)
