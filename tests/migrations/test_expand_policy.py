"""Every revision after the baseline only expands, unless it names the release after which it may contract."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from finmesh.platform.storage.migrations import script_directory
from tests.migrations.expand_policy import REPO, problems, released_commit
from tests.migrations.support import require_history

SERVICES = ("identity", "payments", "risk", "notify")


@pytest.mark.parametrize("service", SERVICES)
def test_real_revisions_only_expand(service: str) -> None:
    """The shipped revisions keep the previous release working (or are marked contract steps, released)."""
    assert problems(script_directory(service), released_commit()) == {}


@pytest.mark.parametrize("service", SERVICES)
def test_history_is_one_line_from_one_baseline(service: str) -> None:
    """One base and one head: two heads would leave `upgrade heads` order, and each color's view, undefined."""
    directory = script_directory(service)
    assert len(directory.get_bases()) == 1
    assert len(directory.get_heads()) == 1
    assert all(s.revision.startswith(f"{service}_") for s in directory.walk_revisions())


def _synthetic(tmp_path: Path, body: str, header: str = "") -> ScriptDirectory:
    """payments' real history plus one revision whose upgrade() is `body`, in a scratch script directory."""
    root = tmp_path / "scripts"
    shutil.copytree(
        Path(script_directory("payments").versions), root / "versions", ignore=shutil.ignore_patterns("__pycache__")
    )
    head = script_directory("payments").get_current_head()
    (root / "versions" / "payments_9000_synthetic.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = 'payments_9000'\ndown_revision = {head!r}\n{header}\n\n"
        "def upgrade() -> None:\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n"
    )
    return ScriptDirectory(str(root))


EXPANDS = {
    "new table with index": """
        op.create_table('fx_quotes', sa.Column('id', sa.String(36), primary_key=True),
                        sa.Column('rate', sa.String(32), nullable=False),
                        sa.UniqueConstraint('rate', name='uq_fx_rate'))
        op.create_index('ix_fx_rate', 'fx_quotes', ['rate'], unique=True)
    """,
    "nullable column": "op.add_column('payments', sa.Column('note', sa.String(100), nullable=True))",
    "not null with server default": """
        op.add_column('payments', sa.Column('fee', sa.BigInteger(), nullable=False, server_default='0'))
    """,
    "plain index": "op.create_index('ix_payments_status', 'payments', ['status'])",
    "loosen to nullable": "op.alter_column('payments', 'description', nullable=True, existing_type=sa.String(200))",
    "backfill": "op.execute(\"UPDATE payments SET review_note = '' WHERE review_note IS NULL\")",
}

CONTRACTS = {
    "drop column": ("op.drop_column('payments', 'review_note')", "drop_column"),
    "drop column in batch mode": (
        """
        with op.batch_alter_table('payments') as batch:
            batch.drop_column('review_note')
    """,
        "drop_column",
    ),
    "not null without default": (
        "op.add_column('payments', sa.Column('fee', sa.BigInteger(), nullable=False))",
        "NOT NULL without",
    ),
    "rename column": ("op.alter_column('payments', 'review_note', new_column_name='note')", "renames"),
    "type change": ("op.alter_column('payments', 'amount', type_=sa.Integer())", "type"),
    "make not null": ("op.alter_column('payments', 'settlement_batch_id', nullable=False)", "NOT NULL"),
    "unique index on old table": ("op.create_index('ux_ref', 'transfers', ['reference'], unique=True)", "unique"),
    "constraint on old table": ("op.create_unique_constraint('uq_ref', 'transfers', ['reference'])", "tightens"),
    "rename table": ("op.rename_table('refunds', 'returns')", "rename_table"),
    "raw ddl": ("op.execute('DROP TABLE refunds')", "raw SQL"),
    "drop index": ("op.drop_index('ix_refunds_payment', table_name='refunds')", "drop_index"),
}


@pytest.mark.parametrize("body", EXPANDS.values(), ids=EXPANDS.keys())
def test_expanding_revisions_pass(tmp_path: Path, body: str) -> None:
    """What the previous release can live with passes unmarked."""
    assert problems(_synthetic(tmp_path, body), released_commit()) == {}


@pytest.mark.parametrize(("body", "why"), CONTRACTS.values(), ids=CONTRACTS.keys())
def test_unmarked_contract_steps_are_rejected(tmp_path: Path, body: str, why: str) -> None:
    """A revision the previous release cannot run against fails the policy unless it is marked."""
    found = problems(_synthetic(tmp_path, body), released_commit())
    assert list(found) == ["payments_9000"]
    assert any(why in line for line in found["payments_9000"]), found


def test_contract_step_marked_with_a_shipped_release_passes(tmp_path: Path) -> None:
    """Naming the released commit (the first release that no longer reads the column) allows the drop."""
    require_history(REPO, released_commit())
    header = f"CONTRACT_AFTER_RELEASE = {released_commit()!r}"
    assert problems(_synthetic(tmp_path, CONTRACTS["drop column"][0], header), released_commit()) == {}


def test_contract_step_naming_an_unknown_release_is_rejected(tmp_path: Path) -> None:
    """A marker naming no commit at or before deploy/RELEASED does not excuse the drop."""
    header = "CONTRACT_AFTER_RELEASE = '" + "0" * 40 + "'"
    found = problems(_synthetic(tmp_path, CONTRACTS["drop column"][0], header), released_commit())
    assert "not a release at or before deploy/RELEASED" in found["payments_9000"][0]


def test_sql_around_op_is_rejected(tmp_path: Path) -> None:
    """SQL sent on the bare connection, past op, is not classified, so it fails closed."""
    body = "op.get_bind().execute(sa.text('DELETE FROM refunds'))"
    found = problems(_synthetic(tmp_path, body), released_commit())
    assert "SQL the policy did not classify" in found["payments_9000"][0]


def test_uninspectable_upgrade_is_rejected(tmp_path: Path) -> None:
    """An upgrade() that cannot run offline (here: it fails) cannot be judged, so it fails closed."""
    body = "raise RuntimeError('needs rows from the live database')"
    found = problems(_synthetic(tmp_path, body), released_commit())
    assert "cannot be inspected offline" in found["payments_9000"][0]
