"""Tables of the risk database, shared by every risk replica (velocity, devices, incidents live here)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from finmesh.platform.messaging.fanout import fanout_tables
from finmesh.platform.messaging.outbox import outbox_table
from finmesh.platform.storage.idempotency import idempotency_tables

metadata = MetaData()


def _seq() -> Column:
    # Insertion order for stable pagination; SQLite only autoincrements a plain INTEGER key.
    return Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)


assessments = Table(
    "assessments",
    metadata,
    Column("assessment_id", String(36), primary_key=True),
    Column("payment_id", String(64), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("payee_account_id", String(64), nullable=False, default=""),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("device_id", String(64), nullable=False, default=""),
    Column("ip_address", String(64), nullable=False, default=""),
    Column("ip_country", String(2), nullable=False, default=""),
    Column("home_country", String(2), nullable=False, default=""),
    Column("tier", String(12), nullable=False, default="UNSPECIFIED"),
    Column("score", Integer, nullable=False),
    Column("decision", String(10), nullable=False),
    Column("warning_level", String(10), nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("rules_version", String(40), nullable=False),
    Column("synthetic", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Velocity reads one subject's recent real (not synthetic) rows; indicators read a time range.
    Index("ix_assessments_user_time", "user_id", "created_at"),
    Index("ix_assessments_device_time", "device_id", "created_at"),
    Index("ix_assessments_ip_time", "ip_address", "created_at"),
    Index("ix_assessments_time", "created_at"),
    # With `synthetic` before the time the velocity read skips load-test rows in the index instead of
    # fetching each of them: a load test's payers have thousands of rows in their windows (risk_0003).
    Index("ix_assessments_user_real_time", "user_id", "synthetic", "created_at"),
    Index("ix_assessments_device_real_time", "device_id", "synthetic", "created_at"),
    Index("ix_assessments_ip_real_time", "ip_address", "synthetic", "created_at"),
)

# One row per payer, locked for the length of an assessment so that replicas
# counting the same payer's velocity take turns instead of both approving.
subjects = Table(
    "subjects",
    metadata,
    Column("subject_key", String(80), primary_key=True),
    Column("touched_at", DateTime(timezone=True), nullable=False),
)

known_devices = Table(
    "known_devices",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Index("ix_known_devices_device", "device_id"),
)

block_list = Table(
    "block_list",
    metadata,
    _seq(),
    Column("entry_id", String(36), nullable=False, unique=True),
    Column("kind", String(10), nullable=False),
    Column("value", String(64), nullable=False),
    Column("reason", String(200), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    # Removal keeps the row: who was blocked, and until when, stays auditable.
    Column("removed_at", DateTime(timezone=True), nullable=True),
    Index("ix_block_list_kind_value", "kind", "value"),
)

# One row per incident: a critical warning on an account. The emergency
# response (freeze through payments) is driven from here, so a crash between
# deciding and freezing is retried from the row, with the same idempotency key.
alerts = Table(
    "alerts",
    metadata,
    _seq(),
    Column("alert_id", String(36), nullable=False, unique=True),
    Column("level", String(10), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("payment_id", String(64), nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("rules_version", String(40), nullable=False),
    Column("event_id", String(36), nullable=False),  # the outbox event that alerts an operator
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("frozen_at", DateTime(timezone=True), nullable=True),
    # When identity accepted the payer's tier raised to HIGH for this incident (SetRiskTier, reason RISK_EVENT).
    Column("tier_raised_at", DateTime(timezone=True), nullable=True),
    Column("emergency_response_done", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("parked", Boolean, nullable=False, default=False),  # refused for good: an operator must look
    Column("last_error", String(200), nullable=False, default=""),
    Index("ix_alerts_account_time", "account_id", "created_at"),
    Index("ix_alerts_pending", "emergency_response_done", "parked", "next_attempt_at"),
    Index("ix_alerts_time", "created_at"),
)

aml_reports = Table(
    "aml_reports",
    metadata,
    _seq(),
    Column("report_id", String(36), nullable=False, unique=True),
    Column("kind", String(12), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("payment_id", String(64), nullable=False),  # the payment that filed it
    Column("payment_ids", JSON, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("rules_version", String(40), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("kind", "payment_id", name="uq_aml_reports_kind_payment"),
    Index("ix_aml_reports_user_kind_time", "user_id", "kind", "created_at"),
)

# Every activation of rules, newest last; the newest is active on every replica.
rules_activations = Table(
    "rules_activations",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("version", String(40), nullable=False),
    Column("source", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("origin", String(10), nullable=False),  # default | file | rpc
    Column("activated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rules_activations_version", "version"),
    Index("ix_rules_activations_origin", "origin", "id"),
)

onboarding_assessments = Table(
    "onboarding_assessments",
    metadata,
    _seq(),
    Column("assessment_id", String(36), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("tier", String(12), nullable=False),
    Column("score", Integer, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("rules_version", String(40), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_onboarding_user", "user_id"),
)

# What risk keeps about each user from identity's events (finmesh.risk.usecases.intake): the country of
# residence the geography rule compares a payment's IP country with, and the tier. No name, no number: a code.
user_profiles = Table(
    "user_profiles",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("country_of_residence", String(2), nullable=False, default=""),
    Column("tier", String(12), nullable=False, default="UNSPECIFIED"),
    # The newest identity event applied (its aggregate sequence): an older one arriving late changes nothing.
    Column("sequence", BigInteger, nullable=False, default=0),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per event ever taken from a producer: the dedupe (redeliveries are answered DUPLICATE).
consumed_events = Table(
    "consumed_events",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("source", String(20), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("aggregate_id", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

# Users identity erased, and what risk removed of theirs (the record an auditor asks for).
erasures = Table(
    "erasures",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    Column("devices_deleted", Integer, nullable=False),
    Column("assessments_anonymised", Integer, nullable=False),
)

# Stored answers per caller (and the previous release's table, see finmesh.platform.storage.idempotency).
idempotency = idempotency_tables(metadata)
outbox = outbox_table(metadata)
# Delivery state of every event consumer but notify (finmesh.platform.messaging.fanout).
outbox_deliveries, outbox_cursors = fanout_tables(metadata)
