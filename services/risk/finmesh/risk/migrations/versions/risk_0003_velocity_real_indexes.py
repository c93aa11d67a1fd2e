"""Expand: velocity indexes with `synthetic` before the time, so load-test rows are skipped in the index.

The velocity read counts a subject's real rows inside its window. Through (subject, created_at) it fetched
every row of the window to test `synthetic`: a load test's few payers have thousands there, read again by
every batch. New indexes only: the previous release's statements are unchanged (the old indexes stay until
a contract release drops them).

Revision ID: risk_0003
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "risk_0003"
down_revision: str | Sequence[str] | None = "risk_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_assessments_user_real_time", "assessments", ["user_id", "synthetic", "created_at"])
    op.create_index("ix_assessments_device_real_time", "assessments", ["device_id", "synthetic", "created_at"])
    op.create_index("ix_assessments_ip_real_time", "assessments", ["ip_address", "synthetic", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_assessments_ip_real_time", table_name="assessments")
    op.drop_index("ix_assessments_device_real_time", table_name="assessments")
    op.drop_index("ix_assessments_user_real_time", table_name="assessments")
