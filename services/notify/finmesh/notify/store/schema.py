"""Tables of the notify database."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text

from finmesh.platform.idempotency import idempotency_table

metadata = MetaData()

# One row per event ever accepted: the primary key is the deduplication.
received_events = Table(
    "received_events",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("source", String(20), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("aggregate_id", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

notifications = Table(
    "notifications",
    metadata,
    Column("notification_id", String(36), primary_key=True),
    Column("event_id", String(36), nullable=False, default=""),
    Column("user_id", String(64), nullable=False),
    Column("channel", String(10), nullable=False),
    Column("category", String(15), nullable=False),
    Column("template", String(40), nullable=False),
    Column("locale", String(10), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(15), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index("ix_notifications_user", "user_id", "created_at"),
)

idempotency = idempotency_table(metadata)
