"""Expand: idempotency keys per caller, in a new table keyed (method, key, scope).

Keys were global per method: another caller's use of a key answered IDEMPOTENCY_KEY_REUSED, so one customer
could block another's keys and learn which keys exist (issue 16). The scope is the caller
(finmesh.platform.storage.idempotency.caller_scope).

Why a new table and not a wider primary key on idempotency_keys: changing that key is a drop and an add of
the constraint (a contract step), and the previous release, still running on the other color, looks answers
up by (method, key) alone and relies on that key to catch concurrent retries. So, expand only:
- `scoped_idempotency_keys` (new), keyed (method, key, scope); the key before the scope lets payments' ledger
  writer look a batch of keys up in one indexed statement whatever their callers.
- `idempotency_keys.scope` (new, nullable): this release also writes each answer into the old table, with its
  scope, wherever the key is free there (a retry or a rollback onto the previous release then still finds it,
  instead of running the operation again); the previous release's own rows keep scope NULL, and this release
  honours them for every caller, as they were.

Contract, in a later release once no color runs the previous one: stop the mirror, then drop
idempotency_keys (docs/DEPLOY.md, "Idempotency keys per caller").

Revision ID: notify_0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "notify_0003"
down_revision: str | Sequence[str] | None = "notify_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scoped_idempotency_keys",
        sa.Column("method", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("refusal", sa.LargeBinary(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("method", "key", "scope"),
    )
    op.add_column("idempotency_keys", sa.Column("scope", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("idempotency_keys", "scope")
    op.drop_table("scoped_idempotency_keys")
