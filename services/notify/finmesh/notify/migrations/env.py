"""Alembic env of notify: migrate on the connection finmesh.platform.storage.migrations hands over."""

from finmesh.notify.migrations import metadata
from finmesh.platform.storage.migrations import run_env

run_env(metadata)
