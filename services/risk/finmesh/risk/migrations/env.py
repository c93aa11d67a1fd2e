"""Alembic env of risk: migrate on the connection finmesh.platform.storage.migrations hands over."""

from finmesh.platform.storage.migrations import run_env
from finmesh.risk.migrations import metadata

run_env(metadata)
