"""Alembic env of payments: migrate on the connection finmesh.platform.storage.migrations hands over."""

from finmesh.payments.migrations import metadata
from finmesh.platform.storage.migrations import run_env

run_env(metadata)
