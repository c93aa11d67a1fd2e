"""Expand: login attempts recorded for the login throttle, and a held password verdict on challenges.

The fixed lockout (login_throttle) gives way to growing delays counted from recorded attempts (issue 16,
defect 7). New table and a nullable column only: the previous release's statements are unchanged, and
login_throttle stays until a contract release drops it.

Revision ID: identity_0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "identity_0003"
down_revision: str | Sequence[str] | None = "identity_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(length=36), nullable=False),
        sa.Column("address", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_login_attempts_subject_at", "login_attempts", ["subject", "at"], unique=False)
    op.create_index(
        "ix_login_attempts_subject_address_at", "login_attempts", ["subject", "address", "at"], unique=False
    )
    op.add_column("challenges", sa.Column("password_ok", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("challenges", "password_ok")
    op.drop_index("ix_login_attempts_subject_address_at", table_name="login_attempts")
    op.drop_index("ix_login_attempts_subject_at", table_name="login_attempts")
    op.drop_table("login_attempts")
