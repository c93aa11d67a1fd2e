"""Alembic environment of the identity database, run by finmesh.platform.storage.migrations (env.py, versions/)."""

from finmesh.identity.store.schema import metadata

__all__ = ["metadata"]
