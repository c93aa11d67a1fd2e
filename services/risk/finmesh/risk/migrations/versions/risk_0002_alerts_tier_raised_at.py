"""Expand: alerts.tier_raised_at, when identity accepted the payer's tier raised for the incident.

Nullable, so the previous release's INSERTs (which leave it out) keep working.

Revision ID: risk_0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "risk_0002"
down_revision: str | Sequence[str] | None = "risk_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("alerts", sa.Column("tier_raised_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch_op:
        batch_op.drop_column("tier_raised_at")
