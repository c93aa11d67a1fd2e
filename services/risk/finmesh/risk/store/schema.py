"""Tables of the risk database."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table

from finmesh.platform.idempotency import idempotency_table
from finmesh.platform.outbox import outbox_table

metadata = MetaData()

assessments = Table(
    "assessments",
    metadata,
    Column("assessment_id", String(36), primary_key=True),
    Column("payment_id", String(64), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("device_id", String(64), nullable=False, default=""),
    Column("ip_address", String(64), nullable=False, default=""),
    Column("score", Integer, nullable=False),
    Column("decision", String(10), nullable=False),
    Column("warning_level", String(10), nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("rules_version", String(40), nullable=False),
    Column("synthetic", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_assessments_user_time", "user_id", "created_at"),
)

idempotency = idempotency_table(metadata)
outbox = outbox_table(metadata)
