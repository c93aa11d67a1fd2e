"""Tables of the identity database. Personal data is only ever stored encrypted or as a keyed hash."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, LargeBinary, MetaData, String, Table

from finmesh.platform.messaging.fanout import fanout_tables
from finmesh.platform.messaging.outbox import outbox_table
from finmesh.platform.storage.idempotency import idempotency_tables

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

# Token signing keys. The private half is sealed with a key derived from the master key and
# destroyed when the key is retired; the public half stays published until not_after.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(40), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("private_key_enc", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
    Column("not_after", DateTime(timezone=True), nullable=True),
)

# Refresh tokens: opaque, single use, only their SHA-256 stored. A family is one login's chain
# of refreshes; presenting a spent token again revokes the whole family (token theft).
sessions = Table(
    "sessions",
    metadata,
    Column("session_id", String(36), primary_key=True),
    Column("family_id", String(36), nullable=False, index=True),
    Column("user_id", String(36), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# One-time codes (contact verification, login second factor): only a keyed hash of the code.
challenges = Table(
    "challenges",
    metadata,
    Column("challenge_id", String(36), primary_key=True),
    Column("user_id", String(36), nullable=False),
    Column("purpose", String(12), nullable=False),  # CONTACT or LOGIN
    Column("channel", String(8), nullable=False),  # SMS, EMAIL or TOTP
    Column("code_hash", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("used_at", DateTime(timezone=True), nullable=True),
    # Login challenges issued under the global login throttle: whether the password was right, told only
    # once the second factor passes. NULL: the password's verdict was given at Login.
    Column("password_ok", Boolean, nullable=True),
    Index("ix_challenges_user_created", "user_id", "created_at"),
)

# TOTP (RFC 6238): the secret is sealed with the user's data key, so erasure destroys it too.
totp = Table(
    "totp",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("secret_enc", LargeBinary, nullable=False),
    Column("enabled", Boolean, nullable=False, default=False),
    # Last accepted time step: a code is accepted once (RFC 6238 section 5.2).
    Column("last_step", BigInteger, nullable=False, default=0),
)

# Password login attempts (finmesh.identity.domain.login_throttle counts them): who (the user id, or a
# keyed hash of a login no user has), from where (a keyed hash of the client address), when, and the outcome.
login_attempts = Table(
    "login_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subject", String(36), nullable=False),
    Column("address", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("outcome", String(12), nullable=False),
    Index("ix_login_attempts_subject_at", "subject", "at"),
    Index("ix_login_attempts_subject_address_at", "subject", "address", "at"),
)

# The fixed lockout's counters, no longer written or read: kept while the previous release may still run
# against this schema (expand/contract, docs/DEPLOY.md); a later release drops it.
login_throttle = Table(
    "login_throttle",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("failures", Integer, nullable=False, default=0),
    Column("locked_until", DateTime(timezone=True), nullable=True),
)

# Who read clear personal data, when and why (seed 3.4).
pii_access_log = Table(
    "pii_access_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", String(36), nullable=False, index=True),
    Column("accessor_id", String(64), nullable=False),
    Column("fields", String(100), nullable=False),
    Column("purpose", String(200), nullable=False),
    Column("accessed_at", DateTime(timezone=True), nullable=False),
)

# Stored answers per caller (and the previous release's table, see finmesh.platform.storage.idempotency).
idempotency = idempotency_tables(metadata)
outbox = outbox_table(metadata)
# Delivery state of every event consumer but notify (finmesh.platform.messaging.fanout).
outbox_deliveries, outbox_cursors = fanout_tables(metadata)
