"""Alembic environment of the payments database, run by finmesh.platform.storage.migrations (env.py, versions/)."""

from finmesh.payments.store.schema import metadata

__all__ = ["metadata"]
