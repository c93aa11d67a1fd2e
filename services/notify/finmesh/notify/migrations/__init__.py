"""Alembic environment of the notify database, run by finmesh.platform.storage.migrations (env.py, versions/)."""

from finmesh.notify.store.schema import metadata

__all__ = ["metadata"]
