"""Alembic environment of the risk database, run by finmesh.platform.storage.migrations (env.py, versions/)."""

from finmesh.risk.store.schema import metadata

__all__ = ["metadata"]
