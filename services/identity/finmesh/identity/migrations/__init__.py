"""Alembic environment of the identity database, run by finmesh.platform.migrations (env.py, versions/)."""

from finmesh.identity.store.schema import metadata

__all__ = ["metadata"]
