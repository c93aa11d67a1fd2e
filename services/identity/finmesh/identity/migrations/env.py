"""Alembic env of identity: migrate on the connection finmesh.platform.migrations hands over."""

from finmesh.identity.migrations import metadata
from finmesh.platform.migrations import run_env

run_env(metadata)
