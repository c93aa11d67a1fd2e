"""Expand: an outbox index for the relay's head check (an aggregate's earlier undelivered events).

The claim's NOT EXISTS walked an aggregate's whole history through the unique (aggregate_id, sequence) key,
delivered events included, so a busy account's claims slowed down as it aged. New index only: the previous
release's statements are unchanged.

Revision ID: identity_0002
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "identity_0002"
down_revision: str | Sequence[str] | None = "identity_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outbox_aggregate_pending", "outbox", ["aggregate_id", "delivered_at", "dead", "sequence"])


def downgrade() -> None:
    op.drop_index("ix_outbox_aggregate_pending", table_name="outbox")
