"""Databases: engines (SQLite or PostgreSQL), migrations, idempotency keys, group commit, SQLite driver internals."""
