"""Alembic env of payments: migrate on the connection finmesh.platform.migrations hands over."""

from finmesh.payments.migrations import metadata
from finmesh.platform.migrations import run_env

run_env(metadata)
