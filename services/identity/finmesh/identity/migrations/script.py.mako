"""${message}

Revision ID: ${up_revision}
Create Date: ${create_date}
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}

# Both colors run against the result, so a revision only expands: new tables, nullable or
# server-defaulted columns, new indexes. A contract step (drop, rename, type change, NOT NULL)
# names the first release whose code no longer reads what it removes, and ships only once that
# release is deployed (tests/migrations/test_expand_policy.py checks both):
# CONTRACT_AFTER_RELEASE = "<commit of that release>"


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
