"""Tables of the payments database (no other service reads them)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from finmesh.platform.messaging.fanout import fanout_tables
from finmesh.platform.messaging.outbox import outbox_table
from finmesh.platform.storage.idempotency import idempotency_tables

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
    # A merchant's captured takings not yet settled (see domain.ledger).
    Column("unsettled", BigInteger, nullable=False, default=0),
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
    # Copied from the transfer so an account's statement needs no join.
    Column("kind", String(20), nullable=False),
    Column("bucket", String(10), nullable=False),
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
    Column("review_note", String(500), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=True),
    Column("settlement_batch_id", String(36), nullable=True),
    Index("ix_payments_payer", "payer_account_id", "created_at"),
    Index("ix_payments_payee", "payee_account_id", "created_at"),
    Index("ix_payments_unsettled", "payee_account_id", "settlement_batch_id", "captured_at"),
)

refunds = Table(
    "refunds",
    metadata,
    Column("refund_id", String(36), primary_key=True),
    Column("payment_id", String(36), ForeignKey("payments.payment_id"), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reason", String(200), nullable=False, default=""),
    Column("transfer_id", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_refunds_payment", "payment_id"),
)

channel_operations = Table(
    "channel_operations",
    metadata,
    # Derived from the idempotency key and sent to the channel as its
    # idempotency key, so a retried call never moves money twice there.
    Column("operation_id", String(36), primary_key=True),
    Column("kind", String(10), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("channel", String(40), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(12), nullable=False),
    Column("channel_reference", String(64), nullable=False, default=""),
    Column("destination_token", String(128), nullable=False, default=""),
    Column("failure_reason", String(100), nullable=False, default=""),
    Column("idempotency_key", String(128), nullable=False, default=""),
    # Whose key it is (finmesh.platform.storage.idempotency.caller_scope): the sweeper records the answer under it.
    # NULL on operations the previous release began.
    Column("idempotency_scope", String(200), nullable=True),
    Column("request_hash", LargeBinary(32), nullable=True),
    Column("transfer_id", String(36), nullable=True),
    Column("reconciliation_report_id", String(36), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    Index("ix_channel_operations_pending", "status", "created_at"),
    Index("ix_channel_operations_channel", "channel", "status"),
)

# Daily limit usage per user and currency (see domain.limits).
daily_usage = Table(
    "daily_usage",
    metadata,
    Column("owner_id", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
)

# Risk tier per user, kept here until tiers travel in identity's access tokens.
account_tiers = Table(
    "account_tiers",
    metadata,
    Column("owner_id", String(64), primary_key=True),
    Column("tier", String(20), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

settlement_batches = Table(
    "settlement_batches",
    metadata,
    Column("batch_id", String(36), primary_key=True),
    Column("merchant_account_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("cutoff", DateTime(timezone=True), nullable=False),
    Column("gross", BigInteger, nullable=False),
    Column("fees", BigInteger, nullable=False),
    Column("risk_reserve", BigInteger, nullable=False),
    Column("net", BigInteger, nullable=False),
    Column("payment_count", Integer, nullable=False),
    Column("transfer_id", String(36), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_settlement_merchant", "merchant_account_id", "created_at"),
)

reconciliation_reports = Table(
    "reconciliation_reports",
    metadata,
    Column("report_id", String(36), primary_key=True),
    Column("channel", String(40), nullable=False),
    Column("matched_count", Integer, nullable=False),
    Column("mismatch_count", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

reconciliation_lines = Table(
    "reconciliation_lines",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("report_id", String(36), ForeignKey("reconciliation_reports.report_id"), nullable=False),
    Column("channel_reference", String(64), nullable=False),
    Column("outcome", String(24), nullable=False),
    Column("statement_minor_units", BigInteger, nullable=False),
    Column("ledger_minor_units", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
)

# Append-only, hash-chained record of every ledger change (domain.audit).
audit_log = Table(
    "audit_log",
    metadata,
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("recorded_at", String(40), nullable=False),
    Column("kind", String(30), nullable=False),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# One row: the newest audit record. Every ledger write locks it first, which
# also serialises writers across replicas (see writer.LedgerWriter).
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("sequence", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Stored answers per caller (and the previous release's table, see finmesh.platform.storage.idempotency).
idempotency = idempotency_tables(metadata)
outbox = outbox_table(metadata)
# Delivery state of every event consumer but notify (finmesh.platform.messaging.fanout).
outbox_deliveries, outbox_cursors = fanout_tables(metadata)
