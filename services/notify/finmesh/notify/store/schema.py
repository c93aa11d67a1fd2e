"""Tables of the notify database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

from finmesh.platform.storage.idempotency import idempotency_tables

metadata = MetaData()


def _serial() -> Column[int]:
    return Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)


def _at(name: str, nullable: bool = False) -> Column[datetime]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


# One row per event ever accepted: the primary key is the deduplication.
received_events = Table(
    "received_events",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("source", String(20), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("aggregate_id", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    _at("received_at"),
    Index("ix_received_aggregate", "source", "aggregate_id", "sequence"),
)

# What notify knows of a user: the locale templates are rendered in, the zone quiet hours are read in.
profiles = Table(
    "profiles",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("locale", String(10), nullable=False, default=""),
    Column("time_zone", String(64), nullable=False, default=""),
    _at("updated_at"),
)

# Users identity erased (identity.user.erased.v1). The marker is all notify keeps of them: it refuses
# later messages (USER_ERASED) and stops queued ones, even when they raced the erasure.
erased_users = Table(
    "erased_users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("event_id", String(36), nullable=False),
    _at("erased_at"),
)

# Every message, whatever the channel; external ones are also the send queue.
notifications = Table(
    "notifications",
    metadata,
    Column("notification_id", String(36), primary_key=True),
    Column("event_id", String(36), nullable=False, default=""),
    Column("user_id", String(64), nullable=False),
    Column("channel", String(10), nullable=False),
    # SECURITY | TRANSACTIONAL | MARKETING; also the worker lane, so marketing never queues ahead of codes.
    Column("category", String(15), nullable=False),
    Column("template", String(40), nullable=False),
    Column("locale", String(10), nullable=False),
    # Sealed (finmesh.notify.store.sealing): bodies carry one-time codes, addresses are personal data.
    Column("subject_sealed", LargeBinary, nullable=True),
    Column("body_sealed", LargeBinary, nullable=False),
    Column("address_sealed", LargeBinary, nullable=True),
    Column("webhook_id", String(36), nullable=False, default=""),
    Column("status", String(15), nullable=False),  # QUEUED | SENT | FAILED | DEAD_LETTERED
    Column("attempts", Integer, nullable=False, default=0),
    # When QUEUED: the next attempt, or the claim lease of the worker sending it now.
    _at("next_attempt_at", nullable=True),
    Column("last_error", String(300), nullable=False, default=""),
    Column("traceparent", String(64), nullable=False, default=""),
    _at("created_at"),
    _at("sent_at", nullable=True),
    Index("ix_notifications_user", "user_id", "created_at"),
    Index("ix_notifications_queue", "status", "category", "next_attempt_at"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    _serial(),
    Column("dead_letter_id", String(36), nullable=False, unique=True),
    Column("notification_id", String(36), nullable=False),
    Column("channel", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", String(300), nullable=False),
    _at("created_at"),
    Column("redriven", Boolean, nullable=False, default=False),
    _at("redriven_at", nullable=True),
    Index("ix_dead_letters_notification", "notification_id"),
)

# Current consent per (user, category) ...
consents = Table(
    "consents",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("category", String(15), primary_key=True),
    Column("granted", Boolean, nullable=False),
    Column("quiet_hours_start", String(5), nullable=False, default=""),
    Column("quiet_hours_end", String(5), nullable=False, default=""),
    Column("time_zone", String(64), nullable=False),
    _at("recorded_at"),
)

# ... and every change of it, append-only: the evidence that consent was given (seed 5.4).
consent_log = Table(
    "consent_log",
    metadata,
    _serial(),
    Column("user_id", String(64), nullable=False),
    Column("category", String(15), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("quiet_hours_start", String(5), nullable=False),
    Column("quiet_hours_end", String(5), nullable=False),
    Column("time_zone", String(64), nullable=False),
    _at("recorded_at"),
    Index("ix_consent_log_user", "user_id", "category"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("webhook_id", String(36), primary_key=True),
    Column("url_sealed", LargeBinary, nullable=False),
    Column("event_types", JSON, nullable=False),
    Column("secret_sealed", LargeBinary, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    _at("created_at"),
)

complaints = Table(
    "complaints",
    metadata,
    Column("complaint_id", String(36), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("subject_sealed", LargeBinary, nullable=False),
    Column("body_sealed", LargeBinary, nullable=False),
    Column("state", String(10), nullable=False),
    _at("opened_at"),
    _at("accept_due"),
    _at("respond_due"),
    _at("resolve_due"),
    _at("accepted_at", nullable=True),
    _at("responded_at", nullable=True),
    _at("resolved_at", nullable=True),
    Column("escalated", Boolean, nullable=False, default=False),
    Index("ix_complaints_state", "state", "opened_at"),
)

complaint_events = Table(
    "complaint_events",
    metadata,
    _serial(),
    Column("complaint_id", String(36), nullable=False),
    Column("from_state", String(10), nullable=False),
    Column("to_state", String(10), nullable=False),
    Column("note_sealed", LargeBinary, nullable=True),
    _at("at"),
    Index("ix_complaint_events_complaint", "complaint_id"),
)

# One row per missed deadline: the key makes each escalation happen once, whichever replica sees it.
complaint_escalations = Table(
    "complaint_escalations",
    metadata,
    Column("complaint_id", String(36), primary_key=True),
    Column("stage", String(10), primary_key=True),
    _at("escalated_at"),
)

# Stored answers per caller (and the previous release's table, see finmesh.platform.storage.idempotency).
idempotency = idempotency_tables(metadata)
