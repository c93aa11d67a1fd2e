"""Tables of the payments database (no other service reads them)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Index, Integer, MetaData, String, Table

from finmesh.platform.idempotency import idempotency_table
from finmesh.platform.outbox import outbox_table

metadata = MetaData()

# Money columns are BIGINT minor units everywhere.
accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("owner_id", String(64), nullable=False, default=""),
    Column("kind", String(20), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(10), nullable=False, default="ACTIVE"),
    Column("channel", String(40), nullable=False, default=""),
    Column("available", BigInteger, nullable=False, default=0),
    Column("held", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_accounts_owner", "owner_id"),
)

transfers = Table(
    "transfers",
    metadata,
    Column("transfer_id", String(36), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reference", String(64), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("transfer_id", String(36), ForeignKey("transfers.transfer_id"), nullable=False),
    Column("account_id", String(64), ForeignKey("accounts.account_id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_entries_account", "account_id", "entry_id"),
)

payments = Table(
    "payments",
    metadata,
    Column("payment_id", String(36), primary_key=True),
    Column("payer_account_id", String(64), nullable=False),
    Column("payee_account_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("captured", BigInteger, nullable=False, default=0),
    Column("refunded", BigInteger, nullable=False, default=0),
    Column("status", String(20), nullable=False),
    Column("capture_mode", String(10), nullable=False),
    Column("description", String(200), nullable=False, default=""),
    Column("risk_assessment_id", String(64), nullable=False, default=""),
    Column("risk_score", Integer, nullable=False, default=0),
    Column("risk_decision", String(10), nullable=False, default=""),
    Column("risk_reasons", String(500), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_payments_payer", "payer_account_id", "created_at"),
)

channel_operations = Table(
    "channel_operations",
    metadata,
    Column("operation_id", String(36), primary_key=True),
    Column("kind", String(10), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("channel", String(40), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(12), nullable=False),
    Column("channel_reference", String(64), nullable=False),
    Column("transfer_id", String(36), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

idempotency = idempotency_table(metadata)
outbox = outbox_table(metadata)
