"""Tables of the identity database. Personal data is only ever stored encrypted or as a keyed hash."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, LargeBinary, MetaData, String, Table

from finmesh.platform.idempotency import idempotency_table
from finmesh.platform.outbox import outbox_table

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("kind", String(12), nullable=False),
    # The user's data key, wrapped by the master key; NULL once erased.
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("legal_name_enc", LargeBinary, nullable=True),
    Column("id_number_enc", LargeBinary, nullable=True),
    Column("phone_enc", LargeBinary, nullable=True),
    Column("email_enc", LargeBinary, nullable=True),
    # Blind indexes: unique, so duplicates are refused without reading clear values.
    Column("id_number_index", String(64), nullable=True, unique=True),
    Column("phone_index", String(64), nullable=True, unique=True),
    Column("email_index", String(64), nullable=True, unique=True),
    # Masked forms for display; they identify no one on their own.
    Column("legal_name_masked", String(60), nullable=False),
    Column("id_number_masked", String(18), nullable=False),
    Column("phone_masked", String(20), nullable=False),
    Column("email_masked", String(80), nullable=False),
    Column("birth_year", String(4), nullable=False),
    Column("password_hash", String(200), nullable=False),
    Column("locale", String(10), nullable=False),
    Column("risk_tier", String(12), nullable=False, default="UNSPECIFIED"),
    Column("id_number_check", String(12), nullable=False, default="PASSED"),
    Column("contact_check", String(12), nullable=False, default="PENDING"),
    Column("real_name_check", String(12), nullable=False, default="PENDING"),
    Column("roles", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=True),
)

idempotency = idempotency_table(metadata)
outbox = outbox_table(metadata)
